"""The worker/caller hand-over: order, the end, and a body lent after queued batches."""

from __future__ import annotations

from llmstream import TextDelta
from llmstream._lending import LentBody
from llmstream._queue import EventQueue


def _lent() -> LentBody:
    return LentBody(reader=None, on_return=lambda: None)  # type: ignore[arg-type]


def test_batches_come_out_in_order_and_all_at_once() -> None:
    queue = EventQueue(10)
    queue.put([TextDelta("a")])
    queue.put([TextDelta("b"), TextDelta("c")])
    assert queue.get(0) == ([[TextDelta("a")], [TextDelta("b"), TextDelta("c")]], False, None, None)
    assert queue.get(0) == ([], False, None, None)


def test_a_body_lent_after_a_batch_is_offered_only_once_the_batch_was_taken() -> None:
    # The caller must hand out what the worker queued before it lent the body,
    # or the lent body's next text would overtake it.
    queue, lent = EventQueue(10), _lent()
    queue.put([TextDelta("before")])
    queue.lend(lent)
    assert queue.get(0) == ([[TextDelta("before")]], False, None, None)
    assert queue.get(0) == ([], False, None, lent)


def test_the_end_is_seen_only_with_or_after_the_last_batch() -> None:
    queue = EventQueue(10)
    queue.put([TextDelta("last")])
    error = RuntimeError("boom")
    queue.end(error)
    assert queue.get(0) == ([[TextDelta("last")]], True, error, None)
