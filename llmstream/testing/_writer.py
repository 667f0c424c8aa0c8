"""The body writer: send a write plan through one socket, applying the reply's framing options.

Strategy: the plan (see ``_faults``) is bytes interleaved with ``Pause`` and
``Abort``. The writer groups ``events_per_write`` byte items into one write,
cuts each write into pieces (``drip``: 1 byte; ``split_seed``: random 1-32
bytes), paces writes ``interval`` seconds apart on a fixed schedule (so the
average rate is exact even though each wait may overshoot a little), stops
after exactly ``close_after_bytes`` body bytes, and wraps each piece in HTTP/1.1
chunked encoding when the response is chunked (written by hand: a chunk per
socket write, so a client sees exactly the splits the reply asked for).

Invariants: ``close_after_bytes`` counts body bytes, never the chunked
framing; a chunk header always announces exactly the bytes that follow it, so
a cut body is still "N bytes delivered, then the connection broke".

Must never: sleep with ``time.sleep`` (every wait goes through the server's
stop-aware ``pause``/``sleep`` so ``stop()`` is prompt), or buffer more than
one write.
"""

from __future__ import annotations

import random
import time
from typing import Any, Callable, Iterable, Iterator, List, Optional

from ._faults import Abort, Pause, PlanItem
from ._reply import Reply

__all__ = ["BodyWriter"]

MAX_SPLIT = 32  # largest random piece with split_seed, in bytes
_END = object()  # the end of the plan


class BodyWriter:
    """Write one response body.

    Args:
        send: writes bytes to the socket (raises ``OSError`` when the client left).
        reply: the reply whose framing options apply.
        pause: ``pause(seconds) -> bool``, False when the server stops or the client left.
        sleep: ``sleep(seconds) -> bool``, a precise stop-aware wait for pacing.
        before_end: called (once or more) just before the body's last piece is sent, or its
            cut piece: from then on the client can see the answer end.
    """

    def __init__(self, send: Callable[[bytes], None], reply: Reply, *, pause: Callable[[float], bool],
                 sleep: Callable[[float], bool], before_end: Callable[[], None] = lambda: None) -> None:
        self._send = send
        self._before_end = before_end
        self._reply = reply
        self._pause = pause
        self._sleep = sleep
        self._rng = random.Random(reply.split_seed) if reply.split_seed is not None else None
        self._written = 0
        self._started = False
        self._next_at: Optional[float] = None

    def run(self, plan: Iterable[PlanItem]) -> bool:
        """Send the plan; return True when the body ended cleanly, False to close abruptly."""
        group: List[bytes] = []
        per_write = self._reply.events_per_write
        items = iter(plan)
        following: Any = next(items, _END)
        while following is not _END:
            item, following = following, next(items, _END)  # one ahead: the last write is known
            if isinstance(item, bytes):
                group.append(item)
                if len(group) >= per_write:
                    if not self._write(b"".join(group), last=following is _END):
                        return False
                    group.clear()
                continue
            if group and not self._write(b"".join(group)):
                return False
            group.clear()
            if isinstance(item, Abort):
                return False
            if isinstance(item, Pause):
                if not self._pause(item.seconds):
                    return False
                self._next_at = None  # pacing restarts after a stall instead of bursting to catch up
        return not group or self._write(b"".join(group), last=True)

    def finish(self) -> None:
        """Send the end of a chunked body (call only after a clean ``run`` on a chunked response)."""
        self._before_end()
        self._send(b"0\r\n\r\n")

    def _write(self, data: bytes, *, last: bool = False) -> bool:
        if not self._started:
            self._started = True
            if self._reply.stall_before_first_byte and not self._pause(self._reply.stall_before_first_byte):
                return False
        limit = self._reply.close_after_bytes
        cut = limit is not None and self._written + len(data) >= limit
        if cut:
            data = data[: limit - self._written]  # type: ignore[operator]
        pieces = self._pieces(data)
        following = next(pieces, None)
        while following is not None:
            piece, following = following, next(pieces, None)
            if not self._paced():
                return False
            if following is None and (last or cut):
                self._before_end()
            self._send(b"%x\r\n%s\r\n" % (len(piece), piece) if self._reply.chunked else piece)
        self._written += len(data)
        return not cut

    def _pieces(self, data: bytes) -> Iterator[bytes]:
        if not data:
            return
        if self._reply.drip:
            yield from (data[i:i + 1] for i in range(len(data)))
        elif self._rng is not None:
            start = 0
            while start < len(data):
                end = start + self._rng.randint(1, MAX_SPLIT)
                yield data[start:end]
                start = end
        else:
            yield data

    def _paced(self) -> bool:
        interval = self._reply.interval
        if not interval:
            return True
        now = time.monotonic()
        if self._next_at is None:
            self._next_at = now + interval
            return True
        delay = self._next_at - now
        self._next_at += interval
        return delay <= 0 or self._sleep(delay)
