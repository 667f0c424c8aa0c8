"""The delivered answer text, kept once: the resumer writes it, the stream reads it.

Strategy: with retries on, both the resumer (to match or continue a broken
answer) and the ``TokenStream`` (``.text``, ``partial_text``, the result)
need the text the caller was handed. :class:`SharedText` is the one copy:
the thread that holds the body appends each batch as it passes the resumer's
filter (``_resume.Resumer.filter``), and the stream reads a prefix of it —
as long as what its caller has taken (read-ahead batches still queued are in
the log, not yet in ``.text``).

Invariants:
  * One writer at a time (the thread holding the body: the worker's, or the
    caller's while the body is lent); readers in any thread.
  * The hot path takes no lock: ``list.extend`` is atomic under the GIL and
    only adds at the end. Folding pieces into a block, clearing (a ``Reset``)
    and reading take ``_lock``, so a reader never sees a piece twice or
    misses one.
  * Memory stays near the answer's UTF-8 size: every ``COMPACT_EVERY`` pieces
    are joined into one block, kept UTF-8 encoded (``bytes``), and a block
    is merged with the one before it while that one is no larger and the two
    fit in ``MAX_BLOCK`` (a binary counter up to that size: few blocks, each
    byte copied a few times). A ``str``
    would cost 2 bytes per character for the whole block as soon as it holds
    one character past U+00FF (a curly quote, an em dash, an emoji: common in
    LLM answers), 4 past U+FFFF. Reading decodes it: a string is built only
    when someone asks for the text (``.text``, ``partial_text``, a resume).
    Blocks, not one growing ``bytearray``: growing one buffer to tens of MB
    makes the allocator copy it when it moves from the heap to its own
    mapping, and the heap space it leaves stays in the process's RSS.
  * ``stop_keeping()`` (``TokenStream.to_file``: the text goes to a file) turns
    the log into a :class:`~._resume_match.TextDigest` of the text from then
    on: the resumer can still check a replay against it, and the memory stays
    flat; ``kept`` is then False.
  * A ``Reset`` (a replayed answer that did not match) clears the log when it
    passes the filter, but the caller's loop may not have reached it yet: the
    old text is kept, by epoch, until the stream takes the ``Reset``.

IO shell: a lock, no sockets and no clocks.
"""

from __future__ import annotations

import threading
from typing import Dict, List, Optional

from ._resume_match import TextDigest

__all__ = ["SharedText"]

#: Pieces are joined into one block every this many: a list of small ``str``
#: objects costs ~60 bytes per token, a block ~1 byte per character. Small, so
#: hundreds of concurrent answers whose callers drop their pieces (a relay to a
#: browser) hold ~1 byte per character, not ~60 per token (issue 17).
COMPACT_EVERY = 64
#: Blocks are merged up to this size, and no further: a block of its own
#: mapping (glibc's mmap threshold is 128 KiB, and rises as such blocks are
#: freed) would, once merged away, leave its heap space in the RSS.
MAX_BLOCK = 32 * 1024


class SharedText:
    """The text handed to the caller, kept once for the resumer and the stream."""

    __slots__ = ("_blocks", "_parts", "epoch", "_retired", "_lock", "_digest")

    def __init__(self) -> None:
        #: The text before ``_parts``, UTF-8 ("surrogatepass": a decoded JSON string may hold a lone surrogate).
        self._blocks: List[bytes] = []
        self._parts: List[str] = []
        #: How many times the log was cleared (a ``Reset``): the stream's view names one.
        self.epoch = 0
        self._retired: Optional[Dict[int, str]] = None  # made by the first clear() (a Reset: rare)
        self._lock = threading.Lock()
        self._digest: Optional[TextDigest] = None  # set by stop_keeping()

    # -- the writer (the thread holding the body) ------------------------------------

    def append(self, text: str) -> None:
        """Add a piece at the end."""
        parts = self._parts
        parts.append(text)
        if len(parts) >= COMPACT_EVERY:
            self._compact()

    def extend(self, texts: List[str]) -> None:
        """Add pieces at the end (the hot path: one call per batch, no lock)."""
        parts = self._parts
        parts.extend(texts)
        if len(parts) >= COMPACT_EVERY:
            self._compact()

    def _compact(self) -> None:
        with self._lock:
            parts = self._parts
            count = len(parts)  # only this thread appends: no piece comes in meanwhile
            if self._digest is not None:
                self._digest.append("".join(parts))
            else:
                blocks = self._blocks
                block = "".join(parts).encode("utf-8", "surrogatepass")
                while blocks and len(blocks[-1]) <= len(block) and len(blocks[-1]) + len(block) <= MAX_BLOCK:
                    block = blocks.pop() + block
                blocks.append(block)
            del parts[:count]

    def clear(self) -> None:
        """Forget the text (a ``Reset``): kept for the stream until it takes the ``Reset`` too."""
        with self._lock:
            if self._retired is None:
                self._retired = {}
            self._retired[self.epoch] = self._value_locked()
            self._blocks = []
            self._parts = []
            self.epoch += 1
            if self._digest is not None:
                self._digest.clear()

    def stop_keeping(self) -> None:
        """Keep no text from now on, only its digest (the text goes to a file): memory stays flat."""
        with self._lock:
            if self._digest is not None:
                return
            digest = TextDigest()
            digest.append(self._value_locked())
            self._blocks = []
            self._retired = None
            self._digest = digest

    @property
    def kept(self) -> bool:
        """True while the text is kept (False after ``stop_keeping()``)."""
        return self._digest is None

    def digest(self) -> Optional[TextDigest]:
        """None while the text is kept; after ``stop_keeping()``, the digest of all of it."""
        with self._lock:
            if self._digest is not None:
                self._value_locked()  # folds the last pieces in
            return self._digest

    # -- readers (any thread) --------------------------------------------------------

    def value(self) -> str:
        """The whole text, as a new string."""
        with self._lock:
            return self._value_locked()

    def _value_locked(self) -> str:
        # The pieces go into the bytes first, so the text is decoded in one piece
        # (a str concatenation would copy a long text once more). Pieces the
        # writer appends meanwhile stay: they are past any prefix a reader asks for.
        parts = self._parts
        count = len(parts)
        if self._digest is not None:  # not kept: the pieces only go into the digest
            self._digest.append("".join(parts[:count]))
            del parts[:count]
            return ""
        blocks = self._blocks
        if count:
            blocks.append("".join(parts[:count]).encode("utf-8", "surrogatepass"))
            del parts[:count]
        if len(blocks) > 1:
            self._blocks = blocks = [b"".join(blocks)]  # joined once: the next read decodes it as is
        return blocks[0].decode("utf-8", "surrogatepass") if blocks else ""

    def prefix(self, length: int, epoch: int) -> str:
        """The first ``length`` characters of the text as it was in ``epoch``."""
        with self._lock:
            if epoch == self.epoch:
                text = self._value_locked()
            else:
                text = self._retired.get(epoch, "") if self._retired is not None else ""
        return text if len(text) == length else text[:length]

    def release(self, epoch: int) -> None:
        """The stream has reached ``epoch``: the texts of earlier ones are not needed any more."""
        with self._lock:
            retired = self._retired
            if retired is not None:
                for old in [e for e in retired if e < epoch]:
                    del retired[old]
