"""Typed reading of parsed JSON from the wire: each value has the type a decoder expects, or MalformedStreamError.

Contract
--------
Strategy: a provider decoder never indexes or calls a method on a value it
has not checked. It reads each field through :func:`field` (required),
:func:`optional` (absent or ``null`` give ``None``) or :func:`token_count`
(a bounded whole number), and checks list items with :func:`expect`. A value
of another type raises :class:`MalformedStreamError` whose message says
where, what was expected and what came, in JSON's words::

    OpenAI chat chunk: expected "choices" to be a list, got string

Invariants:
  * ``bool`` is not an integer here, although Python says ``True`` is ``1``.
  * Absent and ``null`` mean the same for optional fields: real servers omit
    fields and null them interchangeably (OpenAI's ``content: null`` on
    tool-call deltas, ``finish_reason: null`` on every chunk).
  * A token count is an integer from 0 to :data:`MAX_TOKENS`; a float that is
    finite and whole (``12.0``, as some OpenAI-compatible servers send) is
    converted. ``1e999`` (which ``json`` reads as ``inf``), ``-1``, ``2.5``
    and strings are refused: a count feeds the rate limiter and the
    process-wide monitor, where one ``inf`` disables a client for good.

Never: repair a value (``str(5)`` delivered as text), touch IO, threads,
clocks or logging.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional, Type, TypeVar

from .._exceptions import MalformedStreamError

__all__ = ["MAX_TOKENS", "expect", "field", "optional", "token_count", "json_type", "malformed"]

T = TypeVar("T")

#: The largest token count accepted: a thousand times the largest context
#: window offered today (1-2 million tokens), far below float precision.
MAX_TOKENS = 10**9

_EXPECTED = {dict: "an object", list: "a list", str: "a string", int: "an integer", bool: "a boolean", float: "a number"}


def json_type(value: Any) -> str:
    """The JSON name of a parsed value's type (``"object"``, ``"list"``, ``"null"``...)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "list"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def malformed(where: str, name: str, expected: str, value: Any) -> MalformedStreamError:
    """The error for ``name`` not being ``expected``: ``'{where}: expected "{name}" to be {expected}, got {type}'``."""
    return MalformedStreamError(f'{where}: expected "{name}" to be {expected}, got {json_type(value)}')


def expect(value: Any, kind: Type[T], name: str, where: str) -> T:
    """Return ``value`` if it is a ``kind`` (``bool`` is not an ``int``), else raise MalformedStreamError."""
    if value.__class__ is kind or (isinstance(value, kind) and not (kind is int and isinstance(value, bool))):
        return value
    raise malformed(where, name, _EXPECTED.get(kind, kind.__name__), value)


def field(obj: Mapping[str, Any], key: str, kind: Type[T], where: str, prefix: str = "") -> T:
    """Return ``obj[key]``, which must be present and a ``kind``; ``prefix`` names ``obj`` in the message."""
    if key not in obj:
        raise MalformedStreamError(f'{where}: expected "{prefix}{key}" to be {_EXPECTED.get(kind, kind.__name__)}, but it is missing')
    return expect(obj[key], kind, prefix + key, where)


def optional(obj: Mapping[str, Any], key: str, kind: Type[T], where: str, prefix: str = "") -> Optional[T]:
    """Return ``obj[key]`` if it is a ``kind``, None if it is absent or ``null``; else raise MalformedStreamError."""
    value = obj.get(key)
    if value is None:
        return None
    return expect(value, kind, prefix + key, where)


def token_count(obj: Mapping[str, Any], key: str, where: str, prefix: str = "") -> Optional[int]:
    """Return ``obj[key]`` as a token count (0 to :data:`MAX_TOKENS`), None if absent or ``null``.

    A finite whole float is converted to ``int``; anything else raises
    MalformedStreamError (see the module contract for why).
    """
    value = obj.get(key)
    if value is None:
        return None
    if isinstance(value, float) and value.is_integer():  # is_integer() is False for inf and nan
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_TOKENS:
        return value
    shown = repr(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else json_type(value)
    raise MalformedStreamError(f'{where}: expected "{prefix}{key}" to be a token count (a whole number from 0 to {MAX_TOKENS}), got {shown}')
