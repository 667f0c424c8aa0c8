"""Jupyter display of a TokenStream: one output area, updated in place, readable, safely escaped.

Strategy: :func:`show` opens one output area (an IPython display handle) and
follows ``stream.events()``. A throttle on ``time.monotonic`` lets at most
:data:`UPDATES_PER_SECOND` updates through whatever the token rate (a browser
repainting on every token freezes the tab); a last update at the end always
shows the final text. A status line under the text gives tokens, tokens/s,
retries and the outcome. A failure stays on screen, then is raised again; a
kernel interrupt closes the stream (worker and socket), shows "stopped" and
propagates, so Jupyter marks the cell interrupted. Outside a kernel an
updatable display would reprint the answer at every update, so the pieces are
printed as they arrive instead.

Escaping: the output is ``text/html`` built here. Every character the model
sends goes through :func:`html.escape`; the only tags are the few this module
adds, without attributes, for a Markdown subset. Handing ``text/markdown`` to
the front end would not be safe: Markdown passes inline HTML through (``<img
onerror=...>``), and outputs of the current session are trusted, so not
sanitised. Links and images stay text on purpose: a shown image URL is fetched
at once (a known way for a prompt injection to send data out), and a link can
carry ``javascript:``.

The formatting (``_render.py``: ``render_markdown``, ``status_line``,
``bundle``) is pure: no IPython, no clock. Needs the ``notebook`` extra (IPython); nothing
else in llmstream imports this module.

:func:`monitor` shows the process-wide monitor (``llmstream.monitor``) live:
active and waiting streams, outcomes and success rate, time-to-first-token
percentiles, errors by type, circuit breaker states, cost. A daemon thread
takes a snapshot about once a second and updates one output area when the
view changed (ipykernel sends a display update from any thread; the
``display_id`` names the area). Every value shown is escaped: error type
names, base URLs and states come from servers and configuration.
"""

from __future__ import annotations

import html
import logging
import math
import sys
import threading
import time
from collections.abc import Generator
from typing import Any, Callable, Optional, Protocol, TextIO

from ._version import DISTRIBUTION

try:
    from IPython.core.getipython import get_ipython
    from IPython.display import display
except ImportError as exc:  # the optional extra is not installed
    raise ImportError(f'llmstream.notebook needs IPython: pip install "{DISTRIBUTION}[notebook]" '
                      '(or pip install ".[notebook]" from a clone)') from exc

from ._events import Distribution, Event, MonitorSnapshot, Reset, Retrying, TextDelta, Usage
from ._exceptions import StreamError, TextNotKeptError
from ._monitor import Monitor
from ._monitor import monitor as process_monitor
from ._render import Bundle, bundle, status_line
from ._stream import TokenStream

__all__ = ["show", "display_stream", "monitor", "MonitorView", "monitor_bundle"]

logger = logging.getLogger("llmstream")

#: The most output-area updates per second: readable, and far below the rate
#: at which repainting freezes a browser tab.
UPDATES_PER_SECOND = 10

# IPython's functions carry no annotations; typed aliases keep mypy --strict useful here.
_display: Callable[..., Any] = display
_get_ipython: Callable[[], Any] = get_ipython


def show(stream: TokenStream, *, markdown: bool = True) -> str:
    """Show a stream live in one Jupyter output area; return its final text.

    The area is updated in place at most :data:`UPDATES_PER_SECOND` times a
    second: the text (a safe Markdown subset, or plain text) and a status line.
    Model output is always escaped; links and images are shown as text. A
    stream that already ended is shown as it ended. Outside a Jupyter kernel
    the text is printed as it arrives.

    Usage::

        from llmstream.notebook import show
        answer = show(client.stream("Explain TCP slow start", model="gpt-4o-mini"))

    Args:
        stream: the stream to follow; ``show`` consumes it.
        markdown: render the answer as Markdown (``True``) or as plain text.

    Returns:
        The final text (what was delivered, if the stream was closed elsewhere).
        For a stream made with ``keep_text=False``, the text delivered while
        ``show`` followed it (it keeps what it shows; nothing before).

    Raises:
        StreamError: the stream failed; the partial text and the error stay on screen.
        KeyboardInterrupt: the kernel was interrupted; the stream is closed
            (worker and socket) and the status reads "stopped".
    """
    tally = _Tally(stream)
    output: _Output
    if _in_kernel():
        output = _LiveOutput(stream, tally, markdown=markdown, open_display=_open_display)
    else:
        output = _PrintedOutput(stream, tally, sys.stdout)
    return _follow(stream, tally, output)


def display_stream(stream: TokenStream) -> None:
    """What a ``TokenStream`` does as a cell's last expression: like :func:`show`, but a failure is only shown.

    Raised from a display hook, the error would only add a traceback that
    IPython prints as a formatter error; the status line already says it.
    A ``KeyboardInterrupt`` still propagates, so the cell is marked interrupted.
    """
    try:
        show(stream)
    except StreamError as exc:
        logger.debug("stream displayed as failed: %s: %s", type(exc).__name__, exc)


# -- following a stream -------------------------------------------------------


class _Output(Protocol):
    def begin(self) -> None: ...

    def progress(self, event: Event) -> None: ...

    def end(self, state: str, error: Optional[BaseException]) -> None: ...


class _Tally:
    """What the status line counts, and the text shown, gathered from the events as they pass.

    The text is the stream's own (``stream.text``) while it keeps it; a stream
    made with ``keep_text=False`` keeps none, so the tally keeps what passes
    show() (a display needs the whole text): what came before show() was
    called is then not on screen.
    """

    def __init__(self, stream: TokenStream) -> None:
        self.stream = stream
        self.retries = 0
        self.output_tokens: Optional[int] = None
        self._own: Optional[list[str]] = None  # the text seen, when the stream keeps none
        try:
            stream.text
        except TextNotKeptError:
            self._own = []

    def see(self, event: Event) -> None:
        if event.__class__ is TextDelta:
            if self._own is not None:
                self._own.append(event.text)
        elif event.__class__ is Retrying:
            self.retries += 1
        elif event.__class__ is Reset:
            if self._own is not None:
                self._own.clear()
        elif isinstance(event, Usage) and event.output_tokens is not None:
            self.output_tokens = event.output_tokens

    def text(self) -> str:
        """The text to show: the stream's, or what passed when it keeps none."""
        if self._own is None:
            return self.stream.text
        text = "".join(self._own)
        self._own[:] = [text]  # joined once per update, not once per piece
        return text

    def status(self, state: str, error: Optional[BaseException] = None) -> str:
        metrics = self.stream.metrics
        tokens = self.output_tokens if self.output_tokens is not None else metrics.text_deltas
        # Generation speed, as LLM benchmarks quote it (the wait for the first token is not
        # counted), and only where it means something (StreamMetrics.tokens_per_second).
        return status_line(state, tokens=tokens, rate=metrics.tokens_per_second, retries=self.retries,
                           error=error, model=self.stream._model, first_token=metrics.time_to_first_token)


def _follow(stream: TokenStream, tally: _Tally, output: _Output) -> str:
    if stream.status != "streaming":
        return _settled(stream, tally, output)
    events = stream.events()
    state, error = "stopped", None  # anything but a normal end or an Exception is a stop
    try:
        output.begin()
        for event in events:
            tally.see(event)
            output.progress(event)
        state = "finished" if stream.status == "finished" else "stopped"
    except Exception as exc:
        state, error = "failed", exc
        raise
    finally:
        # An interrupt may land in this loop rather than in the stream's own
        # wait (which closes the stream itself): close here too, idempotently.
        if isinstance(events, Generator):
            events.close()  # releases the stream's one-consumer lock now, not when collected
        stream.close()
        output.end(state, error)
    return tally.text()


def _settled(stream: TokenStream, tally: _Tally, output: _Output) -> str:
    """Show a stream that ended before ``show`` was called, as it ended."""
    error: Optional[BaseException] = None
    # The Retrying events were consumed elsewhere: every attempt after the first was a retry.
    tally.retries = max(0, stream.metrics.attempts - 1)
    if stream.status == "finished":
        usage = stream.result.usage
        tally.output_tokens = None if usage is None else usage.output_tokens
    elif stream.status == "failed":
        try:
            stream.result  # raises the stream's own error
        except Exception as exc:
            error = exc
    state = stream.status if stream.status in ("finished", "failed") else "stopped"
    output.end(state, error)
    if error is not None:
        raise error
    return tally.text()


class _Throttle:
    """Lets a call through at most once per ``interval`` seconds; the first one at once."""

    def __init__(self, interval: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._interval = interval
        self._clock = clock
        self._next = -math.inf

    def ready(self) -> bool:
        now = self._clock()
        if now < self._next:
            return False
        self._next = now + self._interval
        return True


def _in_kernel() -> bool:
    shell = _get_ipython()
    return shell is not None and getattr(shell, "kernel", None) is not None


def _open_display(first: Bundle) -> Callable[[Bundle], None]:
    handle = _display(first, raw=True, display_id=True)

    def update(new: Bundle) -> None:
        handle.update(new, raw=True)

    return update


class _LiveOutput:
    """One display area in a Jupyter kernel, updated in place through a throttle."""

    def __init__(self, stream: TokenStream, tally: _Tally, *, markdown: bool,
                 open_display: Callable[[Bundle], Callable[[Bundle], None]],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._stream = stream
        self._tally = tally
        self._markdown = markdown
        self._throttle = _Throttle(1.0 / UPDATES_PER_SECOND, clock)
        self._open_display = open_display
        self._update: Optional[Callable[[Bundle], None]] = None

    def bundle(self, state: str, error: Optional[BaseException] = None) -> Bundle:
        return bundle(self._tally.text(), self._tally.status(state, error), state=state, markdown=self._markdown)

    def _publish(self, bundle: Bundle) -> None:
        if self._update is None:
            self._update = self._open_display(bundle)
        else:
            self._update(bundle)

    def begin(self) -> None:
        # The area opens before the first token; that does not use up the
        # throttle, so the first text shows at once.
        self._publish(self.bundle("streaming"))

    def progress(self, event: Event) -> None:
        if self._throttle.ready():
            self._publish(self.bundle("streaming"))

    def end(self, state: str, error: Optional[BaseException]) -> None:
        self._publish(self.bundle(state, error))


class _PrintedOutput:
    """Outside a kernel: the pieces printed as they arrive, the status line at the end."""

    def __init__(self, stream: TokenStream, tally: _Tally, out: TextIO) -> None:
        self._stream = stream
        self._tally = tally
        self._out = out
        self._begun = False

    def begin(self) -> None:
        self._begun = True
        self._out.write(self._tally.text())  # delivered before show() was called
        self._out.flush()

    def progress(self, event: Event) -> None:
        if isinstance(event, TextDelta):
            self._out.write(event.text)
            self._out.flush()
        elif isinstance(event, Reset):
            # Printed text cannot be taken back: the new answer starts on a new line.
            self._out.write("\n")

    def end(self, state: str, error: Optional[BaseException]) -> None:
        if not self._begun:  # a stream that had ended before show()
            self._out.write(self._tally.text())
        self._out.write(f"\n[{self._tally.status(state, error)}]\n")
        self._out.flush()


# -- pure formatting ------------------------------------------------------------


# -- the live monitor --------------------------------------------------------------------


def _ms(value: Optional[float]) -> str:
    return "–" if value is None else f"{value * 1000:.0f} ms"


def _percentiles(d: Distribution) -> str:
    return f"p50 {_ms(d.p50)} · p90 {_ms(d.p90)} · p99 {_ms(d.p99)}"


def _counts(counts: Any) -> str:
    items = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    return ", ".join(f"{name} {n}" for name, n in items) or "none"


def monitor_lines(snap: MonitorSnapshot) -> list[tuple[str, str]]:
    """The rows of the live view, as (label, value) text (unescaped)."""
    rate = "–" if snap.success_rate is None else f"{snap.success_rate:.1%}"
    rows = [
        ("active", f"{snap.active} ({snap.waiting} waiting)"),
        ("ended", f"{snap.finished} finished · {snap.failed} failed · {snap.closed} closed"),
        ("success rate", rate),
        ("time to first token", _percentiles(snap.time_to_first_token)),
        ("duration", _percentiles(snap.duration)),
        ("attempts", f"{snap.attempts} ({sum(snap.retried_errors.values())} retried)"),
        ("errors", _counts(snap.errors)),
        ("retried errors", _counts(snap.retried_errors)),
        ("circuits", ", ".join(f"{url} {state}" for url, state in sorted(snap.circuits.items())) or "none"),
        ("output tokens", f"{snap.output_tokens} ({snap.wasted_output_tokens} wasted)"),
        ("cost", f"${snap.cost:,.6f}"),
    ]
    return rows


def monitor_bundle(snap: MonitorSnapshot) -> Bundle:
    """The live view of a snapshot: escaped HTML (a table) and plain text. Pure: no IPython, no clock."""
    rows = monitor_lines(snap)
    cells = "".join(f"<tr><th>{html.escape(label)}</th><td>{html.escape(value)}</td></tr>" for label, value in rows)
    plain = "\n".join(f"{label}: {value}" for label, value in rows)
    return {"text/html": f"<table><caption>llmstream monitor</caption>{cells}</table>",
            "text/plain": f"llmstream monitor\n{plain}"}


class MonitorView:
    """A live view of the process monitor in one output area; made by :func:`monitor`.

    ``stop()`` ends the updates (idempotent); the area keeps the last view.
    """

    def __init__(self, source: Monitor, interval: float, update: Callable[[Bundle], None], live: bool) -> None:
        self._source = source
        self.interval = interval
        self._update = update
        self._shown = monitor_bundle(source.snapshot())
        self._stopped = threading.Event()
        self._thread: Optional[threading.Thread] = None
        if live:
            self._thread = threading.Thread(target=self._run, name="llmstream-notebook-monitor", daemon=True)
            self._thread.start()

    @property
    def running(self) -> bool:
        """True while the view is being updated."""
        return self._thread is not None and self._thread.is_alive()

    def refresh(self) -> None:
        """Update the area now, if the view changed."""
        new = monitor_bundle(self._source.snapshot())
        if new != self._shown:
            self._shown = new
            self._update(new)

    def _run(self) -> None:
        while not self._stopped.wait(self.interval):
            try:
                self.refresh()
            except Exception:  # a display that cannot be updated (kernel shutting down): stop quietly
                logger.debug("llmstream monitor view stopped", exc_info=True)
                return

    def stop(self) -> None:
        """Stop updating (the last view stays); idempotent."""
        self._stopped.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(self.interval + 1.0)

    def _repr_html_(self) -> str:
        return self._shown["text/html"]

    def __repr__(self) -> str:
        return self._shown["text/plain"]


def monitor(*, interval: float = 1.0, source: Optional[Monitor] = None) -> MonitorView:
    """Show the process monitor live: active streams, success rate, TTFT percentiles, errors, circuits, cost.

    In a Jupyter kernel one output area is updated about every ``interval``
    seconds (only when something changed) until :meth:`MonitorView.stop`.
    Outside a kernel the current view is displayed once.

    Usage::

        view = llmstream.notebook.monitor()
        ...            # run streams in this or other cells, or in threads
        view.stop()

    Args:
        interval: seconds between updates (at least 0.05).
        source: the monitor to show; default ``llmstream.monitor``.
    """
    if isinstance(interval, bool) or not isinstance(interval, (int, float)) or not interval >= 0.05:
        raise ValueError(f"interval must be a number of seconds >= 0.05, got {interval!r}")
    watched = process_monitor if source is None else source
    first = monitor_bundle(watched.snapshot())
    live = _in_kernel()
    if live:
        update = _open_display(first)
    else:
        if _get_ipython() is None:
            print(first["text/plain"])  # plain Python: IPython's display would print the bundle's repr
        else:
            _display(first, raw=True)

        def update(bundle: Bundle) -> None:
            return None

    return MonitorView(watched, float(interval), update, live)