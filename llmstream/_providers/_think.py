"""Inline ``<think>...</think>`` reasoning split out of answer text, whatever the reads cut.

Contract
--------
Models served without a reasoning parser (DeepSeek-R1 distills, QwQ and Qwen3
on llama.cpp or vLLM without ``--reasoning-parser``) write their reasoning
into the answer text between ``<think>`` and ``</think>``. When the caller
asks for it, :class:`ThinkTagSplitter` turns the text inside the tags into
:class:`ThinkingDelta` and the rest into :class:`TextDelta`.

Strategy: a two-state machine (outside / inside) fed text pieces as they
arrive. A piece is searched for the tag that would change the state; text
that cannot be part of a tag is emitted at once, and only a suffix that is a
proper prefix of the awaited tag (``<thi``, ``</thin``) is held back until
the next piece says whether it is a tag. So ``<thi`` + ``nk>`` straddling two
chunks is still a tag, and ``a <b`` is delivered as soon as ``b`` shows it is
not one.

Invariants:
  * Concatenating the TextDelta and ThinkingDelta texts gives the input
    without the tags themselves; nothing else is added, dropped or reordered.
  * Text is held back only while it may be the start of a tag: at most
    ``len("</think>") - 1`` characters.
  * The output does not depend on how the input was cut into pieces (tested
    at every split point), except that it is cut at the same places.
  * ``close()`` hands over a held-back partial tag as what it was (text, or
    thinking inside an unclosed ``<think>``).

Deliberate choices: tags are recognised anywhere, not only at the start (a
model that thinks twice gets both spans as thinking); a ``</think>`` with no
``<think>`` before it is text (vLLM's parser guesses that everything before
it was reasoning, which a stream cannot know until the tag arrives).

Never: touch IO, threads, clocks or logging.
"""

from __future__ import annotations

from typing import List, Union

from .._events import TextDelta, ThinkingDelta

__all__ = ["ThinkTagSplitter", "OPEN", "CLOSE"]

OPEN = "<think>"
CLOSE = "</think>"


def _partial(text: str, tag: str) -> int:
    """The length of the longest suffix of ``text`` that is a proper prefix of ``tag``."""
    for size in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:size]):
            return size
    return 0


class ThinkTagSplitter:
    """Splits streamed text at ``<think>``/``</think>``: text pieces in, Text/Thinking deltas out.

    Usage::

        splitter = ThinkTagSplitter()
        splitter.feed("<thi")          # []  (may be a tag: held back)
        splitter.feed("nk>Hmm</think>Hi")  # [ThinkingDelta("Hmm"), TextDelta("Hi")]
        splitter.close()               # [] (or the held-back text)
    """

    __slots__ = ("_thinking", "_held")

    def __init__(self) -> None:
        self._thinking = False
        self._held = ""

    @property
    def thinking(self) -> bool:
        """True while inside ``<think>...</think>``."""
        return self._thinking

    def feed(self, text: str) -> List[Union[TextDelta, ThinkingDelta]]:
        """Split the next piece of text; return the deltas it completes, in order."""
        if self._held:
            text = self._held + text
            self._held = ""
        elif "<" not in text:  # the common case: no tag can start here
            if not text:
                return []
            return [ThinkingDelta(text) if self._thinking else TextDelta(text)]
        out: List[Union[TextDelta, ThinkingDelta]] = []
        while text:
            tag = CLOSE if self._thinking else OPEN
            at = text.find(tag)
            if at < 0:
                keep = _partial(text, tag)
                self._emit(text[: len(text) - keep], out)
                self._held = text[len(text) - keep :]
                break
            self._emit(text[:at], out)
            self._thinking = not self._thinking
            text = text[at + len(tag) :]
        return out

    def close(self) -> List[Union[TextDelta, ThinkingDelta]]:
        """End of the text: hand over what was held back (it was not a tag after all)."""
        out: List[Union[TextDelta, ThinkingDelta]] = []
        held, self._held = self._held, ""
        self._emit(held, out)
        return out

    def _emit(self, text: str, out: List[Union[TextDelta, ThinkingDelta]]) -> None:
        if text:
            out.append(ThinkingDelta(text) if self._thinking else TextDelta(text))
