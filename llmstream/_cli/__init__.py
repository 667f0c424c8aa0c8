"""The ``llmstream`` command line: ``chat``, ``debug`` and ``serve-fake``.

Strategy: :func:`main` parses, runs one command and turns whatever ends it
into an exit status, so no command deals with exit codes or tracebacks:

* 0 when the command succeeds (``serve-fake`` stopped by Ctrl+C included: that
  is how it is meant to end);
* 1 on an error, reported as one line on stderr,
  ``llmstream: error: <Type>: <message>``, with a traceback before it only
  under ``--verbose``;
* 130 on Ctrl+C, quietly (the answer's line on stdout is ended, nothing else);
* 141 when stdout's reader went away (``llmstream chat ... | head``), quietly:
  the stream is closed (the server stops generating) and nothing is printed.
  141 (128 + SIGPIPE) is what the shell reports for a command that a closed
  pipe stops, as ``yes | head`` does, so ``set -o pipefail`` scripts see the
  same status for llmstream as for any other command;
* 2 for bad usage (argparse's own message), a missing prompt included.

The prompt is the argument, or stdin when the argument is ``-`` or absent
(``echo hi | llmstream chat``). An error a user can act on is followed by a
``llmstream: hint:`` line (Ollama not running).

Every line written to stderr is scrubbed of the API keys in the environment
(:class:`~._session.Secrets`), the ``--verbose`` log lines included. The log
handler is attached to the ``llmstream`` logger only for the duration of
:func:`main`: the root logger and other libraries' loggers (urllib3 logs
request lines) are left alone.

Modules: ``_session`` (options and plumbing ``chat`` and ``debug`` share),
``_chat``, ``_debug`` with ``_timeline``. ``serve-fake`` is
``llmstream.testing.serve``.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import traceback
from typing import Callable, Dict, Iterator, List, Optional, TextIO

from .._exceptions import APIConnectionError, NotFoundError, StreamError, StreamTimeoutError
from .._version import __version__
from ._chat import add_chat_command, run_chat
from ._debug import add_debug_command, run_debug
from ._session import Secrets, one_line, read_prompt

__all__ = ["main"]

#: Exit status of a command stopped by Ctrl+C (128 + SIGINT), as shells report it.
EXIT_INTERRUPTED = 130
#: Exit status when stdout's reader went away (128 + SIGPIPE), as shells report it for ``yes | head``.
EXIT_BROKEN_PIPE = 141
#: Failures a user can cause and fix (a server's answer, a bad option, a busy port):
#: reported without the hint that it may be a bug.
EXPECTED_ERRORS = (StreamError, ValueError, TypeError, OSError)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llmstream", description="Stream LLM answers to the terminal.")
    parser.add_argument("--version", action="version", version=f"llmstream {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_chat_command(commands)
    add_debug_command(commands)
    # Listed for --help only: main() hands everything after "serve-fake" to the fake
    # server's own parser (argparse's REMAINDER would refuse a leading "--port").
    commands.add_parser("serve-fake", help="run the built-in fake LLM server until Ctrl+C (--port, --fault...)")
    return parser


def _parse(argv: Optional[List[str]]) -> argparse.Namespace:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["serve-fake"]:
        return argparse.Namespace(command="serve-fake", args=argv[1:])
    parser = _parser()
    args = parser.parse_args(argv)
    if hasattr(args, "prompt"):
        try:
            args.prompt = read_prompt(args.prompt, sys.stdin)
        except ValueError as exc:
            parser.error(str(exc))
    return args


def _serve_fake(args: argparse.Namespace, err: TextIO, secrets: Secrets) -> int:
    from ..testing import serve

    return serve(args.args)


_COMMANDS: Dict[str, Callable[[argparse.Namespace, TextIO, Secrets], int]] = {
    "chat": run_chat,
    "debug": run_debug,
    "serve-fake": _serve_fake,
}


class _ScrubbingFormatter(logging.Formatter):
    """Formats like the default, then removes secrets from the whole line (tracebacks included)."""

    def __init__(self, secrets: Secrets) -> None:
        super().__init__("%(asctime)s %(name)s %(levelname)s %(message)s")
        self._secrets = secrets

    def format(self, record: logging.LogRecord) -> str:
        """Format ``record``, then scrub it."""
        return self._secrets.scrub(super().format(record))


@contextlib.contextmanager
def _verbose_logging(enabled: bool, err: TextIO, secrets: Secrets) -> Iterator[None]:
    if not enabled:
        yield
        return
    logger = logging.getLogger("llmstream")
    handler = logging.StreamHandler(err)
    handler.setFormatter(_ScrubbingFormatter(secrets))
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def hint(exc: BaseException, args: argparse.Namespace) -> Optional[str]:
    """A next step for an error a user can fix, or None."""
    unreachable = isinstance(exc, APIConnectionError) or (
        isinstance(exc, StreamTimeoutError) and exc.kind == "connect")
    if unreachable and getattr(args, "provider", None) == "ollama":
        where = getattr(args, "base_url", None) or os.environ.get("OLLAMA_HOST") or "localhost:11434"
        return (f"is Ollama running at {where}? Start it (`ollama serve`, or the Ollama app) and pull the model "
                "(`ollama pull llama3.2`), or point OLLAMA_HOST or --base-url at it")
    if isinstance(exc, NotFoundError) and getattr(args, "provider", None) == "ollama":
        model = getattr(args, "model", None) or "llama3.2"
        return f"pull the model first: `ollama pull {model}` (`ollama list` shows the ones you have)"
    return None


def _report_error(exc: BaseException, verbose: bool, err: TextIO, secrets: Secrets,
                  args: Optional[argparse.Namespace] = None) -> None:
    if verbose:
        err.write(secrets.scrub("".join(traceback.format_exception(type(exc), exc, exc.__traceback__))))
    message = one_line(str(exc))
    line = f"llmstream: error: {type(exc).__name__}" + (f": {message}" if message else "")
    if not isinstance(exc, EXPECTED_ERRORS) and not verbose:
        line += " (unexpected: run again with --verbose for the traceback, and please report it)"
    print(secrets.scrub(line), file=err, flush=True)
    advice = hint(exc, args) if args is not None else None
    if advice:
        print(secrets.scrub(f"llmstream: hint: {advice}"), file=err, flush=True)


def _quiet_stdout() -> None:
    # stdout's reader went away (`llmstream chat ... | head`): point stdout at
    # devnull so the interpreter's final flush does not fail a second time.
    with contextlib.suppress(OSError, ValueError, AttributeError):  # no real file descriptor (captured)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())


def main(argv: Optional[List[str]] = None) -> int:
    """Run the ``llmstream`` command line and return its exit status.

    Args:
        argv: the arguments after the program name (default ``sys.argv[1:]``).

    Returns:
        0 on success, 1 on an error (one line on stderr), 130 on Ctrl+C, 141 on a closed stdout pipe.

    Raises:
        SystemExit: on bad usage, ``--help`` and ``--version`` (argparse).
    """
    args = _parse(argv)
    err = sys.stderr
    verbose = bool(getattr(args, "verbose", False))
    secrets = Secrets.from_environment(getattr(args, "base_url", None))
    try:
        with _verbose_logging(verbose, err, secrets):
            return _COMMANDS[args.command](args, err, secrets)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        _quiet_stdout()
        return EXIT_BROKEN_PIPE
    except Exception as exc:  # every error ends as one line (and exit 1), see the module docstring
        _report_error(exc, verbose, err, secrets, args)
        return 1
