"""Shared test helpers: feed bytes to a sans-IO object every way, load recorded streams.

Every byte fixture goes through :func:`feed_all_ways` (h11's ``t_body_reader``
habit): fed whole, one byte at a time, and split in two at every point. A
framing bug that depends on where the network happened to cut the bytes shows
up as a difference between the ways.

Splitting at *every* point is quadratic in the fixture size, so for data over
``_EXHAUSTIVE_LIMIT`` (4 KiB) the two-way splits are: every point in the first
and last ``_EDGE`` (512) bytes, where the protocol's start and end markers
live, plus ``_SAMPLES`` (about 200) evenly spaced points in between. The
points are deterministic, so a failure always reproduces.
"""

from __future__ import annotations

import os
import select
import subprocess
import time
from pathlib import Path
from typing import Any, Callable, Iterator, List, Optional, Sequence, Tuple

__all__ = ["feed_all_ways", "feed_all_ways_no_close", "load_fixture", "read_until", "split_points"]

DATA_DIR = Path(__file__).parent / "data"

_EXHAUSTIVE_LIMIT = 4096
_EDGE = 512
_SAMPLES = 200


def load_fixture(provider: str, name: str) -> bytes:
    """Return ``tests/data/<provider>/<name>`` as raw bytes, exactly as recorded."""
    return (DATA_DIR / provider / name).read_bytes()


def split_points(size: int) -> List[int]:
    """Return the two-way split points used for data of ``size`` bytes (see module docstring)."""
    if size <= _EXHAUSTIVE_LIMIT:
        return list(range(size + 1))
    points = set(range(_EDGE + 1)) | set(range(size - _EDGE, size + 1))
    step = (size - 2 * _EDGE) / (_SAMPLES + 1)
    points.update(_EDGE + int(step * i) for i in range(1, _SAMPLES + 1))
    return sorted(points)


def _ways(data: bytes) -> Iterator[Tuple[str, Sequence[bytes]]]:
    yield "whole", [data]
    yield "bytewise", [data[i : i + 1] for i in range(len(data))]
    for i in split_points(len(data)):
        yield f"split at {i}", [data[:i], data[i:]]


def _run(make: Callable[[], Any], parts: Sequence[bytes], close: bool) -> Tuple[List[Any], Optional[BaseException]]:
    obj = make()
    out: List[Any] = []
    try:
        for part in parts:
            out.extend(obj.feed(part))
        if close:
            out.extend(obj.close())
    except Exception as exc:  # compared across ways, then re-raised by the caller
        return out, exc
    return out, None


def _feed(make: Callable[[], Any], data: bytes, close: bool) -> List[Any]:
    expected: Optional[List[Any]] = None
    expected_exc: Optional[BaseException] = None
    for name, parts in _ways(data):
        out, exc = _run(make, parts, close)
        if expected is None:
            expected, expected_exc = out, exc
            continue
        if expected_exc is not None or exc is not None:
            # Output produced before a failure may legitimately differ (a
            # bytewise feed yields events before the bad line arrives); the
            # failure itself must not.
            got = (type(exc), str(exc)) if exc is not None else None
            want = (type(expected_exc), str(expected_exc)) if expected_exc is not None else None
            assert got == want, f"{name}: raised {got!r}, but fed whole: {want!r}"
            continue
        assert out == expected, f"{name}: output differs from feeding the data whole"
    if expected_exc is not None:
        raise expected_exc
    assert expected is not None
    return expected


def feed_all_ways(make: Callable[[], Any], data: bytes) -> List[Any]:
    """Feed ``data`` to fresh objects every way, then ``close()``; return the common output.

    ``make()`` builds a fresh object with ``feed(bytes) -> list`` and
    ``close() -> list``. The data is fed whole, one byte at a time, and split
    in two at every point (sampled for data over 4 KiB, see the module
    docstring). Every way must give the same flat list of outputs.

    Raises:
        AssertionError: two ways disagree (output, or exception class/message).
        Exception: the exception every way raised, re-raised from the whole feed.
    """
    return _feed(make, data, close=True)


def feed_all_ways_no_close(make: Callable[[], Any], data: bytes) -> List[Any]:
    """Like :func:`feed_all_ways` but never call ``close()``: for data that must stay buffered."""
    return _feed(make, data, close=False)


def read_until(proc: "subprocess.Popen[bytes]", wanted: bytes, timeout: float = 10.0) -> bytes:
    """Read a subprocess's stdout until ``wanted`` appears (bounded); return what was read."""
    assert proc.stdout is not None
    fd, data = proc.stdout.fileno(), b""
    deadline = time.monotonic() + timeout
    while wanted not in data:
        left = deadline - time.monotonic()
        assert left > 0, f"waited {timeout}s for {wanted!r}; got {data!r}"
        if select.select([fd], [], [], left)[0]:
            chunk = os.read(fd, 65536)
            assert chunk, f"stdout closed before {wanted!r}; got {data!r}"
            data += chunk
    return data
