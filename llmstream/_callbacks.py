"""Callbacks for callback-style apps: on_text, on_event, on_retry, on_error, on_complete.

Strategy: callbacks fire in the consumer's thread, from the very loop that
hands items to the caller, so they see exactly what the caller is given, in
order: the text pieces it iterates (never text a replay repeated or a
``Reset`` took back before it reached the caller), every event the stream
delivers, the ``Retrying`` events, the failure, the result. Two places feed
them: :func:`wrap` (around the stream's consuming generator: text, the end,
the failure) and :meth:`Callbacks.observe` (the stream's bookkeeping of every
non-text event).

An exception in a callback closes the stream and is raised as
:class:`~llmstream.CallbackError` whose ``__cause__`` is the callback's
exception; ``on_error`` is not called for it (it is the caller's own).

``on_text=print`` means ``print(text, end="", flush=True)``: the answer
streams to the terminal as one piece of text, which is what anyone passing
``print`` wants.
"""

from __future__ import annotations

import builtins
from typing import TYPE_CHECKING, Any, Callable, Dict, Generator, Iterator, Optional

from ._events import Event, Retrying, StreamResult, TextDelta
from ._exceptions import CallbackError, StreamError

if TYPE_CHECKING:
    from ._stream import TokenStream

__all__ = ["Callbacks"]

NAMES = ("on_text", "on_event", "on_retry", "on_error", "on_complete")


def _print_text(text: str) -> None:
    print(text, end="", flush=True)


class Callbacks:
    """The five callbacks of a stream (each may be None); not changed once made.

    A plain slotted class, not a dataclass: ``import llmstream`` stays clear of
    ``dataclasses`` (see ``_record.py`` for why).
    """

    __slots__ = ("on_text", "on_event", "on_retry", "on_error", "on_complete")

    def __init__(
        self,
        on_text: Optional[Callable[[str], Any]] = None,
        on_event: Optional[Callable[[Event], Any]] = None,
        on_retry: Optional[Callable[[Retrying], Any]] = None,
        on_error: Optional[Callable[[StreamError], Any]] = None,
        on_complete: Optional[Callable[[StreamResult], Any]] = None,
    ) -> None:
        given: Dict[str, object] = {"on_text": on_text, "on_event": on_event, "on_retry": on_retry,
                                    "on_error": on_error, "on_complete": on_complete}
        for name, value in given.items():
            if value is not None and not callable(value):
                raise TypeError(f"{name} must be callable or None, not {type(value).__name__}")
        self.on_text: Optional[Callable[[str], Any]] = _print_text if on_text is builtins.print else on_text
        self.on_event: Optional[Callable[[Event], Any]] = on_event
        self.on_retry: Optional[Callable[[Retrying], Any]] = on_retry
        self.on_error: Optional[Callable[[StreamError], Any]] = on_error
        self.on_complete: Optional[Callable[[StreamResult], Any]] = on_complete

    def __bool__(self) -> bool:
        return any(getattr(self, name) is not None for name in NAMES)

    def merged(self, **overrides: Any) -> "Callbacks":
        """These callbacks with the non-None ``overrides`` (a stream's own) in place of the client's."""
        if all(value is None for value in overrides.values()):
            return self  # not changed once made: shared, not copied for every stream
        values = {name: getattr(self, name) for name in NAMES}
        values.update({k: v for k, v in overrides.items() if v is not None})
        return Callbacks(**values)

    def observe(self, event: Event, stream: "TokenStream") -> None:
        """A non-text event the stream delivers (called by its bookkeeping, in the consumer's thread)."""
        if self.on_event is not None:
            _call(self.on_event, "on_event", event, stream)
        if self.on_retry is not None and isinstance(event, Retrying):
            _call(self.on_retry, "on_retry", event, stream)

    def __repr__(self) -> str:
        return "Callbacks(" + ", ".join(name for name in NAMES if getattr(self, name) is not None) + ")"


def _call(callback: Callable[[Any], Any], name: str, value: Any, stream: "TokenStream") -> None:
    try:
        callback(value)
    except Exception as exc:
        stream.close()
        raise CallbackError(f"{name} raised {type(exc).__name__}: the stream was closed", callback=name,
                            partial_text=stream.text) from exc


def wrap(stream: "TokenStream", source: Generator[Any, None, None], text_only: bool, callbacks: Callbacks) -> Iterator[Any]:
    """The consuming generator, with text, failure and completion callbacks around it."""
    on_text, on_event = callbacks.on_text, callbacks.on_event
    try:
        for item in source:
            if text_only:
                if on_text is not None:
                    _call(on_text, "on_text", item, stream)
                if on_event is not None:
                    _call(on_event, "on_event", TextDelta(item), stream)
            elif item.__class__ is TextDelta:
                if on_text is not None:
                    _call(on_text, "on_text", item.text, stream)
                if on_event is not None:
                    _call(on_event, "on_event", item, stream)
            yield item
    except CallbackError:
        raise
    except StreamError as exc:
        if callbacks.on_error is not None:
            _call(callbacks.on_error, "on_error", exc, stream)
        raise
    finally:
        source.close()  # a caller that stops early closes the stream, as without callbacks
    if callbacks.on_complete is not None and stream.status == "finished":
        _call(callbacks.on_complete, "on_complete", stream.result, stream)
