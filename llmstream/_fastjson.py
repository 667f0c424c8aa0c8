"""Parse one whole JSON document, as ``json.loads`` does, with less overhead and bounded nesting.

Strategy: ``json.loads`` spends about a third of its time in Python
(``loads`` -> ``decode`` -> ``raw_decode`` and two whitespace regex matches)
before its C scanner runs. Streams carry one small JSON document per token, so
that wrapper is the largest cost of the decoding hot path. :func:`loads` calls
the scanner directly and hands anything unusual (leading or trailing
whitespace, an empty string, invalid JSON) to ``json.loads``, so results and
errors are ``json.loads``'s -- with one deliberate deviation:

Nesting is limited to :data:`MAX_DEPTH` levels (RFC 8259 section 9: "An
implementation may set limits on the maximum depth of nesting"). ``json``
recurses once per level and raises ``RecursionError`` -- not a
``ValueError`` -- somewhere near the interpreter's recursion limit, at a
depth that depends on how deep the caller's stack already is; and a value
that parsed just below that limit still breaks ``copy.deepcopy`` or ``repr``
later. So a document nested deeper than ``MAX_DEPTH`` raises
:class:`JSONNestingError`, a ``ValueError``: every caller's ``except
ValueError`` ("not JSON") applies to it unchanged, and the limit is the same
whatever the stack. The depth is counted only for documents long enough to
exceed it, so the hot path (short token chunks) pays one length comparison.

Sans-IO: pure function, no state beyond the scanner.
"""

from __future__ import annotations

import json
import re
from itertools import accumulate
from typing import Any, Callable, Tuple

__all__ = ["loads", "JSONNestingError", "MAX_DEPTH"]

#: The deepest nesting of arrays and objects accepted. Real payloads (chunks,
#: usage objects, tool-call arguments) nest a handful of levels. 256 keeps far
#: enough from the default recursion limit (1000) for ``copy.deepcopy`` (two
#: frames a level) and ``repr`` of a parsed value to work, and puts the depth
#: check's threshold (514 characters) above the size of a token chunk:
#: counting brackets costs ~0.25 us, a fifth of parsing a 250-byte chunk.
MAX_DEPTH = 256
# A document nested deeper than MAX_DEPTH has at least MAX_DEPTH + 1 opening
# and as many closing brackets: anything shorter cannot be too deep.
_CHECK_FROM = 2 * (MAX_DEPTH + 1)
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")
_STEP = {"[": 1, "{": 1, "]": -1, "}": -1}

_json_loads = json.loads
# scan_once is the decoder's (C) scanner: an implementation attribute of
# json.JSONDecoder, present on CPython and PyPy alike.
_scan_once: Callable[[str, int], Tuple[Any, int]] = json.JSONDecoder().scan_once  # type: ignore[attr-defined]


class JSONNestingError(ValueError):
    """Raised when a JSON document nests arrays and objects deeper than :data:`MAX_DEPTH`."""


def loads(data: str) -> Any:
    """``json.loads(data)``, faster; nesting over :data:`MAX_DEPTH` raises :class:`JSONNestingError`.

    Raises:
        ValueError: ``data`` is not JSON (``json.JSONDecodeError``) or is
            nested too deeply (:class:`JSONNestingError`); never ``RecursionError``.
    """
    try:
        try:
            value, end = _scan_once(data, 0)
        except StopIteration:
            end = -1
        if end != len(data):
            value = _json_loads(data)
    except RecursionError as exc:
        raise JSONNestingError(f"JSON nested deeper than {MAX_DEPTH} levels") from exc
    if len(data) >= _CHECK_FROM and data.count("[") + data.count("{") > MAX_DEPTH:
        _check_depth(data)
    return value


def _check_depth(data: str) -> None:
    # Only called on a document that parsed, so its strings are well formed.
    brackets = _NOT_BRACKET.sub("", _STRING.sub("", data))
    if max(accumulate(map(_STEP.__getitem__, brackets)), default=0) > MAX_DEPTH:
        raise JSONNestingError(f"JSON nested deeper than {MAX_DEPTH} levels")
