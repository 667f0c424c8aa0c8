"""The worker/caller hand-over: order, the end, and a body lent after queued batches."""

from __future__ import annotations

import threading
import time
from typing import List, Tuple

from llmstream import TextDelta
from llmstream._events import Event
from llmstream._lending import LentBody
from llmstream._queue import EventQueue, Latch


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


def test_a_batch_put_while_the_caller_waits_is_taken_by_that_wait() -> None:
    # The deque is made by the first put: a caller already waiting must see it.
    queue = EventQueue(10)
    taken: List[Tuple[List[List[Event]], bool]] = []
    waiting = threading.Thread(target=lambda: taken.append(queue.get(10)[:2]))
    waiting.start()
    while not queue._caller_waiting:  # the caller is inside get(), past its first look
        time.sleep(0.001)
    queue.put([TextDelta("late")])
    waiting.join(10)
    assert taken == [([[TextDelta("late")]], False)]


# -- Latch: a stream's cancelled/done flags ---------------------------------------------------


def test_a_latch_is_unset_until_set_and_set_for_ever_after() -> None:
    latch = Latch()
    assert (latch.is_set(), latch.wait(0), latch.wait(0.01)) == (False, False, False)
    latch.set()
    latch.set()  # idempotent
    assert (latch.is_set(), latch.wait(0), latch.wait(None), latch.wait(threading.TIMEOUT_MAX * 2)) == (True,) * 4


def test_setting_a_latch_wakes_every_waiter() -> None:
    latch = Latch()
    woke: List[bool] = []
    # Waits with a timeout, without one, and with one too long for a lock (an Event takes it).
    timeouts = [60.0] * 6 + [None, threading.TIMEOUT_MAX * 2]
    waiters = [threading.Thread(target=lambda t=t: woke.append(latch.wait(t)), daemon=True) for t in timeouts]
    for waiter in waiters:
        waiter.start()
    threading.Thread(target=latch.set).start()
    for waiter in waiters:
        waiter.join(10)  # a waiter woken by nobody would still wait (60 s)
    assert (woke, [waiter.is_alive() for waiter in waiters]) == ([True] * 8, [False] * 8)


def test_racing_sets_leave_a_latch_set() -> None:
    for _ in range(200):
        latch = Latch()
        setters = [threading.Thread(target=latch.set) for _ in range(3)]
        for setter in setters:
            setter.start()
        for setter in setters:
            setter.join(10)
        assert latch.wait(1) is True
