"""Every code block of README.md runs, against the built-in fake server.

The README is split into its fenced code blocks; each is one test, with the id
``<heading-slug>-<n>`` (the n-th block under the nearest heading). A block runs
in a process of its own (the monitor, the default clients and the logging
configuration are process-wide, and a README snippet is run as a user would
run it), with every provider pointed at a fresh ``FakeLLMServer``:
``OPENAI_BASE_URL=<server>/v1``, ``ANTHROPIC_BASE_URL=<server>``,
``OLLAMA_HOST=127.0.0.1:<port>`` and fake API keys (the machine's own keys and
base URLs are removed, so a snippet can never reach a real API).

* ``python`` blocks run as a script (``python -X dev snippet.py``, so an
  unclosed socket or any other warning shows on stderr, which must then be
  empty), or under pytest when marked ``pytest``.
* ``bash`` blocks run in ``bash -e -o pipefail`` from the repository root,
  with ``llmstream`` and ``python`` on the PATH meaning this interpreter and
  this source tree (``python -m llmstream``: what the console script runs).
  A ``serve`` block is started, checked to serve, and stopped with SIGINT.
* The first block, the two install commands, is exercised by ``.ci/run``
  (a fresh virtual environment); here we check that CI still runs them.

What each block must do is written next to it, in HTML comments right before
the block (invisible on GitHub and PyPI), one per line::

    <!-- readme-test: KEY VALUE -->

=============  ======================================================================
key            meaning
=============  ======================================================================
stdout EXPR    stdout equals EXPR, a Python expression (``DEFAULT_TEXT``, ``WORDS``)
stdout-re RE   stdout fully matches the regular expression RE
stderr-has S   stderr contains S (repeatable); without it nor ``stderr-re``, stderr
               must be empty
stderr-re RE   stderr fully matches RE
script EXPRS   the replies the server gives, in order (``Reply(...), Reply(...)``)
default EXPR   the server's ``default_reply``
check EXPR     after the run, EXPR is true in this process (``server``: the fake server)
fake-port N    the number N in the block is replaced by the fake server's port
free-port N    the number N in the block is replaced by a free port
serve          the block serves until Ctrl+C: start, check it answers, SIGINT, exit 0
pytest N       run the block with pytest; its summary says ``N passed``
skip REASON    not run; listed in EXPECTED_SKIPS below, and reported as skipped
newcomer       the "no API key" block: run by ``test_readme_newcomer.py``, which starts
               the server it names and runs every other block with what it prints
=============  ======================================================================

Every block that runs must say what it prints (``stdout``/``stdout-re``), so a
snippet that runs but says something else fails.
"""

from __future__ import annotations

import collections
import os
import re
import shlex
import signal
import socket
import stat
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import pytest

import llmstream
from llmstream.testing import DEFAULT_TEXT, FakeLLMServer, Reply
from llmstream.testing._cli import parse_args as parse_serve_args
from llmstream.testing._reply import split_words

from helpers import read_until

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
CI_RUN = ROOT / ".ci" / "run"
#: Blocks the README marks ``skip``, by id, with the reason. A new skip is a
#: decision: it must be added here too.
EXPECTED_SKIPS: Dict[str, str] = {
    "the-chat-examples-1": "served and checked by tests/test_examples.py",
    "resumable-runs-2": "route fragments; served against a real redis-server by tests/test_redis_runs.py",
}
#: The README's opening block; CI runs these commands (``test_first_block_is_what_ci_runs``).
INSTALL_COMMANDS = 'pip install . && llmstream chat "hello"\npip install ".[test]" && python -m pytest\n'
FAKE_KEY = "sk-readme-test-key"
PROVIDER_ENV_PREFIXES = ("OPENAI_", "ANTHROPIC_", "OLLAMA_", "GEMINI_", "GOOGLE_", "AZURE_OPENAI_")
RUN_TIMEOUT = 60.0
SERVE_TIMEOUT = 10.0

MARKER = re.compile(r"<!--\s*readme-test:\s*(\S+)(?:\s+(.*?))?\s*-->\s*$")
KEYS = frozenset({"stdout", "stdout-re", "stderr-has", "stderr-re", "script", "default", "check",
                  "fake-port", "free-port", "serve", "pytest", "skip", "newcomer"})
#: The names a marker's Python expression may use (plus ``server`` for ``check``).
NAMES: Dict[str, Any] = {"DEFAULT_TEXT": DEFAULT_TEXT, "WORDS": split_words(DEFAULT_TEXT), "Reply": Reply}


@dataclass(frozen=True)
class Block:
    """One fenced code block of the README and the markers right before it."""

    id: str
    lang: str
    code: str
    line: int
    markers: Tuple[Tuple[str, str], ...] = ()

    def values(self, key: str) -> List[str]:
        return [value for k, value in self.markers if k == key]

    def value(self, key: str) -> Optional[str]:
        values = self.values(key)
        assert len(values) <= 1, f"{self.where}: marker {key!r} given {len(values)} times"
        return values[0] if values else None

    @property
    def where(self) -> str:
        return f"README.md:{self.line} ({self.id})"


@dataclass(frozen=True)
class Run:
    returncode: int
    stdout: str
    stderr: str


def slug(heading: str) -> str:
    """GitHub's anchor for a heading, near enough: lower case, words joined by '-'."""
    return "-".join(re.findall(r"[a-z0-9]+", heading.lower()))


def parse(text: str) -> List[Block]:
    """The README's code blocks, in order; ``ValueError`` for a misplaced or unknown marker."""
    lines = text.splitlines()
    blocks: List[Block] = []
    counts: Dict[str, int] = collections.Counter()
    section, pending, i = "top", [], 0
    while i < len(lines):
        line = lines[i]
        marker = MARKER.match(line)
        if marker:
            key, value = marker.group(1), marker.group(2) or ""
            if key not in KEYS:
                raise ValueError(f"README.md:{i + 1}: unknown readme-test marker {key!r}")
            pending.append((key, value))
        elif "readme-test" in line:
            raise ValueError(f"README.md:{i + 1}: a readme-test marker must be one whole line: {line!r}")
        elif line.startswith("```"):
            end = next((j for j in range(i + 1, len(lines)) if lines[j].startswith("```")), None)
            if end is None:
                raise ValueError(f"README.md:{i + 1}: code block never closed")
            counts[section] += 1
            code = "\n".join(lines[i + 1:end]) + "\n"
            blocks.append(Block(f"{section}-{counts[section]}", line[3:].strip(), code, i + 1, tuple(pending)))
            pending, i = [], end
        elif pending:
            raise ValueError(f"README.md:{i + 1}: readme-test markers must be right before a code block")
        elif line.startswith("#"):
            section = slug(line.lstrip("#"))
        i += 1
    if pending:
        raise ValueError("README.md: readme-test markers at the end, before no code block")
    return blocks


BLOCKS = parse(README.read_text(encoding="utf-8"))
RUNNABLE = BLOCKS[1:]  # the first block is CI's


def evaluate(block: Block, expression: str, **names: Any) -> Any:
    try:
        return eval(expression, {"__builtins__": __builtins__, **NAMES, **names})  # our own README's markers
    except Exception as exc:  # a broken marker is a broken README: say where
        raise AssertionError(f"{block.where}: marker expression {expression!r} failed: {exc!r}") from exc


# -- running ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def shims(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory for the PATH where ``llmstream`` and ``python`` mean this interpreter and tree."""
    bin_dir = tmp_path_factory.mktemp("bin")
    for name, command in (("llmstream", f"{shlex.quote(sys.executable)} -m llmstream"),
                          ("python", shlex.quote(sys.executable))):
        path = bin_dir / name
        path.write_text(f'#!/bin/sh\nexec {command} "$@"\n')
        path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return bin_dir


def snippet_env(server: FakeLLMServer, shims: Path) -> Dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(PROVIDER_ENV_PREFIXES)}
    env.update(
        PATH=f"{shims}{os.pathsep}{env.get('PATH', '')}",
        PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p),
        PYTHONIOENCODING="utf-8",
        OPENAI_BASE_URL=server.base_url("openai"),
        OPENAI_API_KEY=FAKE_KEY,
        ANTHROPIC_BASE_URL=server.base_url("anthropic"),
        ANTHROPIC_API_KEY=FAKE_KEY,
        OLLAMA_HOST=f"127.0.0.1:{server.port}",
        GEMINI_API_KEY=FAKE_KEY,
        GOOGLE_GEMINI_BASE_URL=server.base_url("gemini"),
        GOOGLE_VERTEX_BASE_URL=server.base_url("vertex"),
        GOOGLE_CLOUD_PROJECT="my-project",
        AZURE_OPENAI_ENDPOINT=server.base_url("azure"),
        AZURE_OPENAI_API_KEY=FAKE_KEY,
        OPENAI_API_VERSION="2024-10-21",
    )
    return env


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def prepared_code(block: Block, server: FakeLLMServer) -> str:
    code = block.code
    for key, port in (("fake-port", server.port), ("free-port", None)):
        number = block.value(key)
        if number is not None:
            assert number in code, f"{block.where}: {key} {number}, but the block has no {number}"
            code = code.replace(number, str(port if port is not None else free_port()))
    return code


def command(block: Block, code: str, workdir: Path) -> Tuple[List[str], Path]:
    """The command line running ``code``, and the directory to run it in."""
    if block.lang == "python":
        if block.value("pytest") is not None:
            (workdir / "test_readme_snippet.py").write_text(code, encoding="utf-8")
            return [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-W", "error",
                    "test_readme_snippet.py"], workdir
        (workdir / "snippet.py").write_text(code, encoding="utf-8")
        return [sys.executable, "-X", "dev", "snippet.py"], workdir
    if block.lang == "bash":
        return ["bash", "-e", "-o", "pipefail", "-c", code], ROOT
    raise AssertionError(f"{block.where}: no way to run a {block.lang or 'plain'!r} block; "
                         "use python or bash (or mark it skip, with a reason)")


def script_server(block: Block, server: FakeLLMServer) -> None:
    replies = block.value("script")
    if replies is not None:
        server.script(*evaluate(block, f"({replies},)"))
    default = block.value("default")
    if default is not None:
        server.default_reply = evaluate(block, default)


def run_block(block: Block, server: FakeLLMServer, shims: Path, workdir: Path) -> Run:
    script_server(block, server)
    argv, cwd = command(block, prepared_code(block, server), workdir)
    done = subprocess.run(argv, cwd=cwd, env=snippet_env(server, shims), capture_output=True,
                          text=True, encoding="utf-8", timeout=RUN_TIMEOUT, check=False)
    return Run(done.returncode, done.stdout, done.stderr)


def check_run(block: Block, run: Run, server: FakeLLMServer) -> None:
    """Assert what the block's markers say about its run."""
    said = f"{block.where}\n--- stdout:\n{run.stdout}\n--- stderr:\n{run.stderr}"
    assert run.returncode == 0, f"exit status {run.returncode}: {said}"
    passed = block.value("pytest")
    if passed is not None:
        assert re.search(rf"\b{re.escape(passed)}\b", run.stdout), f"pytest did not report {passed!r}: {said}"
        assert " failed" not in run.stdout and " error" not in run.stdout, said
    else:
        stdout, stdout_re = block.value("stdout"), block.value("stdout-re")
        assert stdout is not None or stdout_re is not None, (
            f"{block.where}: say what the block prints with a readme-test stdout (or stdout-re) marker")
        if stdout is not None:
            assert run.stdout == evaluate(block, stdout), f"stdout differs: {said}"
        if stdout_re is not None:
            assert re.fullmatch(stdout_re, run.stdout), f"stdout does not match {stdout_re!r}: {said}"
    stderr_has, stderr_re = block.values("stderr-has"), block.value("stderr-re")
    for part in stderr_has:
        assert part in run.stderr, f"stderr lacks {part!r}: {said}"
    if stderr_re is not None:
        assert re.fullmatch(stderr_re, run.stderr), f"stderr does not match {stderr_re!r}: {said}"
    if not stderr_has and stderr_re is None:
        assert run.stderr == "", f"unexpected stderr: {said}"
    for expression in block.values("check"):
        assert evaluate(block, expression, server=server), f"check failed: {expression}: {said}"


# -- serve blocks -------------------------------------------------------------------


def outcome(base_url: str) -> Tuple[str, str]:
    """One stream, no retry: (the text delivered, "finished" or the error's type name)."""
    with llmstream.Client("openai", base_url=base_url, api_key=FAKE_KEY, retry=1) as client, \
            client.stream("Hi", model="gpt-4o-mini") as stream:
        try:
            return stream.result.text, "finished"
        except llmstream.StreamError as exc:
            return exc.partial_text, type(exc).__name__


def run_serve_block(block: Block, server: FakeLLMServer, shims: Path) -> None:
    """Start the block, stream from what it serves, stop it with SIGINT (exit status 0)."""
    code = prepared_code(block, server)
    [argv] = [shlex.split(line) for line in code.splitlines() if line.strip() and not line.startswith("#")]
    assert argv[:2] == ["llmstream", "serve-fake"], f"{block.where}: a serve block runs llmstream serve-fake"
    options = parse_serve_args(argv[2:])
    # Python ignores SIGINT if it starts with it ignored (pytest run as a background job): restore it.
    proc = subprocess.Popen(["bash", "-c", code], cwd=ROOT, env=snippet_env(server, shims),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        printed = read_until(proc, b"Press Ctrl+C to stop.", SERVE_TIMEOUT).decode()
        url = f"http://127.0.0.1:{options.port}"
        assert f"listening on {url}" in printed and f"base_url={url}/v1" in printed, printed
        served = outcome(f"{url}/v1")
        # The same options, in-process: the command line serves what the library would.
        with FakeLLMServer(default_reply=options.reply, max_concurrent=options.max_concurrent,
                           limit_retry_after=options.limit_retry_after) as same:
            same.script(*options.script)
            assert served == outcome(same.base_url("openai")), f"{block.where}: {served!r}"
        os.killpg(proc.pid, signal.SIGINT)
        _, stderr = proc.communicate(timeout=SERVE_TIMEOUT)
        assert proc.returncode == 0, f"{block.where}: exit status {proc.returncode}, stderr {stderr!r}"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate(timeout=SERVE_TIMEOUT)


# -- the tests ----------------------------------------------------------------------


@pytest.mark.parametrize("block", [pytest.param(b, id=b.id) for b in RUNNABLE])
def test_readme_block(block: Block, server: FakeLLMServer, shims: Path, tmp_path: Path) -> None:
    reason = block.value("skip")
    if reason is not None:
        pytest.skip(f"{block.where}: {reason}")
    if block.value("serve") is not None:
        run_serve_block(block, server, shims)
        return
    if block.value("newcomer") is not None:
        return  # test_readme_newcomer.py runs it, with every other block against what it serves
    check_run(block, run_block(block, server, shims, tmp_path), server)


def test_skipped_blocks_are_the_expected_ones() -> None:
    # The README marks a block it cannot run as-is; each such block is a decision, listed here.
    skipped = {b.id: b.value("skip") for b in BLOCKS if b.value("skip") is not None}
    assert skipped == EXPECTED_SKIPS, f"{len(skipped)} README block(s) marked skip: {skipped}"
    assert len(RUNNABLE) - len(skipped) >= 30, "fewer README blocks run than when this test was written"


def ci_commands() -> List[List[str]]:
    """The commands of .ci/run as words, without ``--quiet`` and redirections."""
    commands = []
    for line in CI_RUN.read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            words = [w for w in shlex.split(line) if w != "--quiet" and not w.startswith(("<", ">"))]
            commands.append(words)
    return commands


def test_first_block_is_what_ci_runs() -> None:
    # The first block is the README's promise: these two lines work on a fresh machine.
    # A test cannot run pip install in a fresh environment; .ci/run does, so check it still runs them.
    first = BLOCKS[0]
    assert (first.lang, first.code, first.markers) == ("bash", INSTALL_COMMANDS, ())
    wanted = [shlex.split(part) for line in first.code.splitlines() for part in line.split("&&")]
    ran = ci_commands()
    positions = [ran.index(words) if words in ran else -1 for words in wanted]
    assert -1 not in positions, f".ci/run does not run {wanted[positions.index(-1)]} (it runs {ran})"
    assert positions == sorted(positions), f".ci/run runs the README's commands out of order: {ran}"


# -- the harness itself: a broken snippet must fail ---------------------------------


BROKEN = [
    pytest.param('<!-- readme-test: stdout "yes\\n" -->\n```python\nprint("no")\n```\n', "stdout differs",
                 id="wrong-output"),
    pytest.param('<!-- readme-test: stdout "" -->\n```python\nimport llmstream\nllmstream.strem("Hi", model="m")\n```\n',
                 "exit status 1", id="wrong-name"),
    pytest.param('```python\nprint("x")\n```\n', "say what the block prints", id="no-expectation"),
    pytest.param('<!-- readme-test: stdout "" -->\n```bash\nllmstream chat --no-such-option hi\n```\n',
                 "exit status 2", id="bad-cli-option"),
    pytest.param('<!-- readme-test: stdout "" -->\n```python\nimport warnings\nwarnings.warn("x", ResourceWarning)\n```\n',
                 "unexpected stderr", id="warning"),
    pytest.param('<!-- readme-test: stdout "" -->\n```text\nhello\n```\n', "no way to run", id="unknown-language"),
]


@pytest.mark.parametrize("markdown, message", BROKEN)
def test_a_broken_snippet_fails(markdown: str, message: str, server: FakeLLMServer, shims: Path,
                                tmp_path: Path) -> None:
    [block] = parse(markdown)
    with pytest.raises(AssertionError, match=message):
        check_run(block, run_block(block, server, shims, tmp_path), server)


def test_breaking_a_readme_snippet_fails(server: FakeLLMServer, shims: Path, tmp_path: Path) -> None:
    [block] = [b for b in RUNNABLE if b.id == "in-a-script-1"]
    broken = Block(block.id, block.lang, block.code.replace("print(text,", "print(text.upper(),"), block.line,
                   block.markers)
    assert broken.code != block.code
    with pytest.raises(AssertionError, match="stdout differs"):
        check_run(broken, run_block(broken, server, shims, tmp_path), server)


@pytest.mark.parametrize("markdown, message", [
    pytest.param("<!-- readme-test: stdout 1 -->\ntext\n```python\n```\n", "right before a code block",
                 id="marker-not-before-block"),
    pytest.param("<!-- readme-test: sdtout 1 -->\n```python\n```\n", "unknown readme-test marker", id="unknown-key"),
    pytest.param("<!-- readme-test: stdout\n1 -->\n```python\n```\n", "one whole line", id="multi-line-marker"),
    pytest.param("```python\nprint(1)\n", "never closed", id="unclosed-block"),
])
def test_a_broken_marker_is_refused(markdown: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse(markdown)


def test_ids_are_unique_and_readable() -> None:
    ids = [b.id for b in BLOCKS]
    assert len(ids) == len(set(ids))
    assert ids[0] == "llmstream-1"
    assert all(re.fullmatch(r"[a-z0-9-]+-\d+", i) for i in ids), ids
