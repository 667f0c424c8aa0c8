"""Matching a resumed answer against what the caller already has: replay and continue.

Strategy: the resumer (``_resume``) picks how a broken stream goes on; the
filters here sit between the next attempt's decoder and the caller and drop
what the caller already has.

  * :class:`ReplayFilter` (``resume="replay"``): the new answer is the whole
    answer again. It is held back until it has gone past the delivered
    content; if it diverges (or ends before going past it), ``Reset`` and then
    the new answer from its beginning.
  * :class:`ContinuationFilter` (``resume="continue"``): the new answer should
    be only the continuation of a prefill, but a server may ignore the prefill
    and start its answer again ("ParParis"). See its docstring for the rule
    and its one ambiguity.

Invariants: what the caller receives is the delivered text followed by
exactly the new text, or a ``Reset`` (never silently a repeat). Matching is by
offset (``startswith(x, pos)``), never by slicing, so a long answer is matched
in linear time.

With ``keep_text=False`` no copy of the delivered text exists: a replay is
matched against a :class:`TextDigest` instead (its length and a running
BLAKE2 hash, with a checkpoint every ``CHECKPOINT_CHARS``), by a
:class:`DigestMatcher`. The new answer is dropped while it is inside the
delivered length and checked at each checkpoint; a mismatch cannot be shown
as a ``Reset`` (the new answer's start was not kept), so it is a
``ResumeError``.

Sans-IO: no sockets, threads, clocks or logging.
"""

from __future__ import annotations

import hashlib
from typing import Any, Dict, List, Optional, Tuple, Union

from ._events import Event, Finish, Reset, TextDelta, ThinkingDelta, ToolCall, ToolCallDelta
from ._exceptions import ResumeError

__all__ = ["ContinuationFilter", "DigestMatcher", "Matcher", "ReplayFilter", "TextDigest", "restart_threshold"]

#: A continuation that repeats this many characters of the delivered text's start
#: (or half of it, if shorter) and then goes another way is an answer that started
#: again, not a continuation. See :class:`ContinuationFilter`.
RESTART_EVIDENCE = 64


def restart_threshold(delivered_length: int) -> int:
    """How much of the delivered text's start a continuation may repeat before it counts as a restart."""
    return min(RESTART_EVIDENCE, (delivered_length + 1) // 2)


class Matcher:
    """Offset into delivered text that a new answer must repeat."""

    __slots__ = ("text", "pos")

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    @property
    def complete(self) -> bool:
        """True once the whole text was repeated."""
        return self.pos >= len(self.text)

    def match(self, piece: str) -> Optional[str]:
        """Consume ``piece``; return what goes past the delivered text, or None if it diverges."""
        text, pos = self.text, self.pos
        if pos >= len(text):
            return piece
        if text.startswith(piece, pos):
            self.pos = pos + len(piece)
            return ""
        rest = len(text) - pos
        if piece.startswith(text[pos:]):
            self.pos = len(text)
            return piece[rest:]
        return None

    @property
    def matched(self) -> str:
        """The part of the text repeated so far."""
        return self.text[: self.pos]

    def common(self, piece: str) -> int:
        """How many characters at the start of ``piece`` repeat the text from the offset on (not consumed)."""
        text, pos = self.text, self.pos
        n = min(len(piece), len(text) - pos)
        i = 0
        while i < n and piece[i] == text[pos + i]:
            i += 1
        return i


#: With ``keep_text=False``, a replay that diverges is found at the next checkpoint
#: at the latest: one every this many characters (a 16-byte digest each, so a
#: 50 MB answer keeps ~50 of them).
CHECKPOINT_CHARS = 1 << 20


def _new_hash() -> Any:
    return hashlib.blake2b(digest_size=16)


def _utf8(text: str) -> bytes:
    # A decoded JSON string may hold a lone surrogate ("\ud800"): hashed as is, not refused.
    return text.encode("utf-8", "surrogatepass")


class TextDigest:
    """What ``keep_text=False`` keeps of the delivered text: its length and hashes of its prefixes."""

    __slots__ = ("length", "_hash", "_checkpoints", "_next", "_every")

    def __init__(self, checkpoint_every: int = CHECKPOINT_CHARS) -> None:
        self.length = 0
        self._hash = _new_hash()
        self._checkpoints: List[Tuple[int, bytes]] = []
        self._every = checkpoint_every
        self._next = checkpoint_every

    def append(self, text: str) -> None:
        """Add a piece at the end."""
        while text:
            room = self._next - self.length
            if len(text) < room:
                self._hash.update(_utf8(text))
                self.length += len(text)
                return
            self._hash.update(_utf8(text[:room]))
            self.length = self._next
            self._checkpoints.append((self.length, self._hash.digest()))
            self._next += self._every
            text = text[room:]

    def extend(self, texts: List[str]) -> None:
        """Add pieces at the end."""
        self.append(texts[0] if len(texts) == 1 else "".join(texts))

    def clear(self) -> None:
        """Forget everything."""
        self.length = 0
        self._hash = _new_hash()
        self._checkpoints = []
        self._next = self._every

    def matcher(self) -> "DigestMatcher":
        """A matcher for a replay of the text digested so far."""
        checks = list(self._checkpoints)
        if not checks or checks[-1][0] != self.length:
            checks.append((self.length, self._hash.digest()))
        return DigestMatcher(checks)


class DigestMatcher:
    """Like :class:`Matcher`, against a :class:`TextDigest`: the text itself is not known."""

    __slots__ = ("_checks", "_length", "_hash", "_index", "pos")

    def __init__(self, checks: List[Tuple[int, bytes]]) -> None:
        self._checks = checks
        self._length = checks[-1][0]
        self._hash = _new_hash()
        self._index = 0
        self.pos = 0

    @property
    def complete(self) -> bool:
        """True once the whole text was repeated (and its digest matched)."""
        return self.pos >= self._length

    def match(self, piece: str) -> Optional[str]:
        """Consume ``piece``; return what goes past the delivered text, or None if a checkpoint did not match."""
        while piece and self.pos < self._length:
            target, digest = self._checks[self._index]
            take = min(len(piece), target - self.pos)
            self._hash.update(_utf8(piece[:take]))
            self.pos += take
            piece = piece[take:]
            if self.pos == target:
                if self._hash.digest() != digest:
                    return None
                self._index += 1
        return piece


class ReplayFilter:
    """Holds back a replayed answer until it goes past what was delivered."""

    def __init__(self, text: Union[str, DigestMatcher], thinking: str, calls: Dict[int, Any], attempt: int) -> None:
        # ``calls``: the resumer's record of each tool call the caller saw (id,
        # name, ``arguments`` log, completed). ``text``: the delivered text, or
        # with keep_text=False a matcher of its digest.
        self.text: Union[Matcher, DigestMatcher] = Matcher(text) if isinstance(text, str) else text
        self.thinking = Matcher(thinking)
        self.calls = {i: (call, Matcher(call.arguments.value())) for i, call in calls.items()}
        self.attempt = attempt
        self.diverged = False

    def filter(self, events: List[Event]) -> List[Event]:
        """The events the caller does not have yet (``Reset`` first if the answer diverged)."""
        out: List[Event] = []
        for event in events:
            if self.diverged:
                out.append(event)
                continue
            kept = self._one(event)
            if kept is None:
                out.extend(self._reset())
                out.append(event)
            elif kept is not _SKIP:
                out.append(kept)
        return out

    def _one(self, event: Event) -> Any:
        if isinstance(event, TextDelta):
            rest = self.text.match(event.text)
            return None if rest is None else (TextDelta(rest) if rest else _SKIP)
        if isinstance(event, ThinkingDelta):
            rest = self.thinking.match(event.text)
            return None if rest is None else (ThinkingDelta(rest) if rest else _SKIP)
        if isinstance(event, Finish) and not self.text.complete:
            # The new answer ended inside the delivered text: it is not the
            # answer the caller holds, so the caller must be told.
            return None
        if isinstance(event, ToolCallDelta) and event.index in self.calls:
            call, matcher = self.calls[event.index]
            rest = matcher.match(event.arguments)
            if rest is None:
                return None
            if not rest:
                return _SKIP
            # The caller saw this call's id and name already: do not announce it twice.
            return ToolCallDelta(event.index, None, None, rest)
        if isinstance(event, ToolCall) and event.index in self.calls:
            call, _ = self.calls[event.index]
            if call.completed:
                return _SKIP
            # Keep the id the caller saw with the first fragments (ids differ per attempt).
            return event.replace(id=call.id or event.id)
        return event

    def _reset(self) -> List[Event]:
        """The new answer diverged: tell the caller, then give what it matched so far."""
        self.diverged = True
        if not isinstance(self.text, Matcher):
            raise ResumeError(
                "the retried answer did not repeat the text already delivered (checked against its hash at "
                f"{self.text.pos} characters), and keep_text=False kept no copy to start the answer again from "
                "(pass keep_text=True for a Reset, or use a resume mode that reconnects: resume='last-event-id')"
            )
        out: List[Event] = [Reset(attempt=self.attempt, discarded_text=self.text.text)]
        if self.thinking.matched:
            out.append(ThinkingDelta(self.thinking.matched))
        if self.text.matched:
            out.append(TextDelta(self.text.matched))
        for index, (call, matcher) in sorted(self.calls.items()):
            if matcher.matched:
                out.append(ToolCallDelta(index, call.id, call.name, matcher.matched))
        return out


_SKIP: Any = object()
#: Events after which no more text of this answer can come: the text is decided.
_TEXT_ENDS = (Finish, ToolCallDelta, ToolCall)


class ContinuationFilter:
    """Holds back a continuation while it may be the answer starting again.

    The delivered text is D. A server asked to continue D may instead ignore
    the prefill and answer from the beginning (the OpenAI ``continue_final_message``
    is a vLLM extension that many compatible servers drop without a word; a
    proxy in front of any API can drop a prefill). Such an answer starts with
    D's start; appending it would show the caller "ParParis". So the new text
    S is held back while it is still a prefix of D, and decided the moment it
    is not, or when the text ends (``Finish``, a tool call):

      * S repeats the whole of D: the answer started again. Only what goes past
        D is delivered, as a replay would.
      * S goes another way after repeating at least :func:`restart_threshold`
        characters of D's start (half of D, at most 64): an answer that started
        again and then differed (sampling). ``Reset``, then the new answer
        from its beginning (``ResumeError`` for plain iteration).
      * otherwise S is a genuine continuation: the held pieces are delivered.
        A short shared start is common in genuine continuations (a list marker
        ``"- "``, ``"The "``), so it does not count as evidence.

    The ambiguity, chosen deliberately: a genuine continuation that begins by
    repeating the whole delivered text (D ``"ha"``, continuation ``"ha!"``)
    looks exactly like a restart, and is treated as one: the caller gets
    ``"ha!"``, not ``"haha!"``. Losing a verbatim repeat of the delivered text
    is the lesser harm: the other reading turns every ignored prefill into a
    silent duplicate, and servers that ignore prefills are common. Likewise a
    genuine continuation that repeats half of D's start (at most 64
    characters) and then differs gets a ``Reset``: loud, never silent.

    What no rule can see: an answer that started again but differed from D
    within its first few characters (a sampled "The French capital..." after
    "The capital of..."). It looks like any continuation and is delivered as
    one. That is why the resumer prefers replay, where a different answer is
    always detected, for providers whose continue is not guaranteed (``auto``),
    and why ``resume="continue"`` is for servers known to honour the prefill.

    Held-back whitespace (Anthropic refuses a prefill ending in whitespace, so
    ``held_back`` was delivered but not sent): a genuine continuation usually
    repeats it at its start, and as much of it as it repeats is dropped. A
    restart is matched against the whole D, whitespace included, so nothing is
    dropped twice.

    Where the network cut the text never matters: the repeated start is
    counted in characters, across and within pieces.
    """

    def __init__(self, delivered: str, held_back: str, attempt: int) -> None:
        self._restart = Matcher(delivered)
        self._held: List[str] = []
        self._whitespace: Optional[Matcher] = Matcher(held_back) if held_back else None
        self._decided = False
        self._attempt = attempt

    def filter(self, events: List[Event]) -> List[Event]:
        """The events the caller does not have yet."""
        out: List[Event] = []
        for event in events:
            if isinstance(event, TextDelta):
                out.extend(self._text(event.text) if not self._decided else self._drop_whitespace(event.text))
                continue
            if not self._decided and isinstance(event, _TEXT_ENDS) and (self._held or isinstance(event, Finish)):
                out.extend(self._decide(""))
            # Usage and thinking say nothing about the text: they pass as they come.
            out.append(event)
        return out

    def _text(self, piece: str) -> List[Event]:
        restart = self._restart
        rest = restart.match(piece)
        if rest is None:
            return self._decide(piece)
        if restart.complete:
            # The whole delivered text again: the answer started again.
            self._decided, self._held, self._whitespace = True, [], None
            return [TextDelta(rest)] if rest else []
        self._held.append(piece)
        return []

    def _decide(self, piece: str) -> List[Event]:
        """S stopped following D after ``restart.pos`` characters: restart or continuation."""
        self._decided = True
        text = "".join(self._held) + piece
        self._held = []
        # Where the network cut the text must not matter: count the repeated
        # start of the diverging piece too.
        repeated = self._restart.pos + self._restart.common(piece)
        if repeated and repeated >= restart_threshold(len(self._restart.text)):
            self._whitespace = None
            return [Reset(attempt=self._attempt, discarded_text=self._restart.text), *([TextDelta(text)] if text else [])]
        return self._drop_whitespace(text)

    def _drop_whitespace(self, text: str) -> List[Event]:
        """Drop, from the continuation's start, as much of the held-back whitespace as it repeats."""
        matcher = self._whitespace
        if matcher is not None and text:
            repeated = matcher.common(text)
            matcher.pos += repeated
            if repeated < len(text) or matcher.complete:
                self._whitespace = None  # the continuation went past it, or repeated all of it
            text = text[repeated:]
        return [TextDelta(text)] if text else []
