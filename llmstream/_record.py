"""Small immutable value classes: what ``@dataclass(frozen=True, slots=True)`` gives, without its cost at import.

Why not dataclasses: ``import dataclasses`` pulls in ``inspect``, ``dis`` and
``ast`` (about 3 ms), and each decorated class costs about 0.4 ms more,
because the decorator writes its methods as source and compiles them when the
module is imported. llmstream's events, metrics and request specs were twenty
such classes: half of what ``import llmstream`` cost beyond ``requests``
(issue 14: a cold start within 1.1x of a plain requests script). Here each
class writes its ``__init__`` by hand (the hot path builds one event per
token) and inherits the rest from :class:`Record`, compiled once into the
``.pyc`` like any code.

The behaviour is the dataclasses' one: fields in ``__match_args__`` order;
``repr`` ``Name(field=value, ...)``; equality and hashing by the tuple of
fields, only between instances of the same class; assignment and deletion
raise :class:`FrozenInstanceError` (an ``AttributeError``); pickling and
``copy`` rebuild through ``__init__``; ``replace(**changes)`` returns a copy
(``dataclasses.replace`` for these classes).

Vocabulary: imports nothing of llmstream.
"""

from __future__ import annotations

from typing import Any, ClassVar, Tuple, TypeVar

__all__ = ["Record", "FrozenInstanceError", "set_field", "unfrozen_twin"]

#: How ``__init__`` methods set a field of a frozen instance.
set_field = object.__setattr__


_R = TypeVar("_R", bound="Record")


class FrozenInstanceError(AttributeError):
    """Raised when a field of an immutable llmstream value is assigned or deleted."""


class Record:
    """Base of llmstream's immutable values; subclasses set ``__slots__``, ``__match_args__`` and ``__init__``."""

    __slots__ = ()
    #: The fields, in order (also what ``match`` statements use, as for dataclasses).
    __match_args__: ClassVar[Tuple[str, ...]] = ()
    #: Fields left out of the repr (secrets, such as request headers).
    _hidden: ClassVar[Tuple[str, ...]] = ()

    def _values(self) -> Tuple[Any, ...]:
        return tuple([getattr(self, name) for name in self.__match_args__])

    def replace(self: _R, **changes: Any) -> _R:
        """A copy with some fields changed, as ``dataclasses.replace`` makes."""
        values = {name: getattr(self, name) for name in self.__match_args__}
        unknown = set(changes) - set(values)
        if unknown:
            raise TypeError(f"{type(self).__name__} has no field {', '.join(sorted(unknown))}")
        values.update(changes)
        return type(self)(**values)

    def __setattr__(self, name: str, value: Any) -> None:
        raise FrozenInstanceError(f"cannot assign to field {name!r}: {type(self).__name__} is immutable")

    def __delattr__(self, name: str) -> None:
        raise FrozenInstanceError(f"cannot delete field {name!r}: {type(self).__name__} is immutable")

    def __repr__(self) -> str:
        shown = ", ".join(f"{name}={getattr(self, name)!r}" for name in self.__match_args__ if name not in self._hidden)
        return f"{type(self).__qualname__}({shown})"

    def __eq__(self, other: object) -> bool:
        if other.__class__ is self.__class__:
            return self._values() == other._values()
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self._values())

    def __reduce__(self) -> Tuple[Any, ...]:
        return (type(self), self._values())


def unfrozen_twin(cls: type) -> type:
    """A class with ``cls``'s slots whose instances are filled field by field, then become ``cls``'s.

    For a per-token hot path (issue 17): ``event = Twin(); event.text = text;
    event.__class__ = TextDelta`` builds an ordinary frozen ``TextDelta`` in
    about a third of the time of ``TextDelta(text)``, whose ``__init__`` stores
    each field through ``object.__setattr__``. Python allows the ``__class__``
    assignment between classes of identical layout: the twin's base is
    ``Record`` too, with the same slots. It has object's own ``__setattr__``
    AND ``__delattr__``: both share one C slot, so with Record's Python
    ``__delattr__`` still inherited CPython would call through a Python-level
    lookup on every store (370 ns an SSE event instead of 110, measured).
    Whoever fills one sets every field ``__init__`` would.
    """
    return type(f"_Unfrozen{cls.__name__}", (Record,), {
        "__slots__": getattr(cls, "__slots__"), "__setattr__": object.__setattr__, "__delattr__": object.__delattr__})
