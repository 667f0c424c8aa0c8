"""The per-token path's thread and loop hand-overs under contention (issue 17).

``Latch`` (a stream's cancelled/done flags on a bare lock), ``_Waker`` (one
per event loop, resolving every waiting async stream with one
``call_soon_threadsafe`` per drain), async streams on many loops at once,
closed midway, and a body lent to the caller's thread closed from another.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from typing import Any, List, Optional, Tuple

import pytest

import llmstream
from llmstream._async import _waker_for
from llmstream._queue import Latch
from llmstream.testing import FakeLLMServer, Reply

from conftest import READING_BODY, wait_thread_in
from relay_servers import wait_until

pytestmark = pytest.mark.timeout(30)


# -- Latch ----------------------------------------------------------------------------------


def test_latch_waiters_racing_two_setters_all_pass_and_leave_it_free() -> None:
    rng = random.Random(7)
    for _ in range(150):
        latch = Latch()
        timeouts: List[Optional[float]] = [rng.choice([0.0, 0.0005, 0.02, None, 5.0]) for _ in range(6)]
        results: List[Tuple[Optional[float], bool]] = []
        gate = threading.Barrier(len(timeouts) + 2)

        def waiter(t: Optional[float]) -> None:
            gate.wait()
            results.append((t, latch.wait(t)))

        def setter() -> None:
            gate.wait()
            latch.set()

        threads = [threading.Thread(target=waiter, args=(t,)) for t in timeouts]
        threads += [threading.Thread(target=setter) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(10)
        assert not any(thread.is_alive() for thread in threads)
        # A wait that could outlast the set must have seen it; a short one may have timed out first.
        assert all(ok for t, ok in results if t is None or t == 5.0), results
        assert len(results) == len(timeouts)
        # Nobody left the lock held: every later wait passes at once.
        assert not latch._lock.locked()
        assert latch.is_set() and latch.wait(0) and latch.wait(None)


def test_a_latch_wait_that_times_out_is_false_and_does_not_eat_the_set() -> None:
    latch = Latch()
    started = time.monotonic()
    assert latch.wait(0.05) is False
    assert 0.04 <= time.monotonic() - started < 1.0
    late = []
    waiter = threading.Thread(target=lambda: late.append(latch.wait(None)))
    waiter.start()
    assert wait_thread_in("wait", [waiter])
    latch.set()
    waiter.join(5)
    assert late == [True] and latch.wait(None)


def test_a_latch_set_wakes_every_waiter_already_blocked_in_it() -> None:
    # Every waiter is inside the lock's acquire before the set: each must pass
    # it on to the next (a set releases the lock once).
    for _ in range(5):
        latch = Latch()
        results: List[bool] = []
        waiters = [threading.Thread(target=lambda t=t: results.append(latch.wait(t)))
                   for t in [None, 10.0, None, 10.0, None, 10.0]]
        for waiter in waiters:
            waiter.start()
        for waiter in waiters:
            assert wait_thread_in("wait", [waiter])
        latch.set()
        for waiter in waiters:
            waiter.join(3)
        assert results == [True] * 6 and not any(waiter.is_alive() for waiter in waiters)


# -- _Waker: one per loop -------------------------------------------------------------------


def _loop_with_wakes(futures_per_loop: int, producers: int, seed: int) -> Tuple[int, int]:
    """In a new loop: futures woken from ``producers`` threads in random order; (resolved, drains)."""

    async def main() -> Tuple[int, int]:
        loop = asyncio.get_running_loop()
        waker = _waker_for(loop)
        assert _waker_for(loop) is waker
        drains = [0]
        real = waker._drain

        def counting_drain() -> None:
            drains[0] += 1
            real()

        waker._drain = counting_drain  # type: ignore[method-assign]
        futures = [loop.create_future() for _ in range(futures_per_loop)]
        rng = random.Random(seed)
        order = list(futures)
        rng.shuffle(order)
        shares = [order[i::producers] for i in range(producers)]

        def produce(share: List[Any], pause: float) -> None:
            for i, future in enumerate(share):
                waker.wake(future)
                if i % 17 == 0:
                    time.sleep(pause)

        threads = [threading.Thread(target=produce, args=(share, rng.random() / 1000)) for share in shares]
        for thread in threads:
            thread.start()
        await asyncio.wait_for(asyncio.gather(*futures), 10)
        for thread in threads:
            thread.join(5)
        assert waker._due == collections_deque() or all(f.done() for f in waker._due)
        return sum(f.done() for f in futures), drains[0]

    return asyncio.run(main())


def collections_deque() -> Any:
    import collections

    return collections.deque()


def test_wakers_on_many_loops_resolve_every_future_from_many_threads() -> None:
    results: List[Tuple[int, int]] = []
    errors: List[BaseException] = []

    def run(seed: int) -> None:
        try:
            results.append(_loop_with_wakes(500, 4, seed))
        except BaseException as exc:  # reported below
            errors.append(exc)

    loops = [threading.Thread(target=run, args=(seed,)) for seed in range(4)]
    for thread in loops:
        thread.start()
    for thread in loops:
        thread.join(20)
    assert errors == [] and len(results) == 4
    for resolved, drains in results:
        assert resolved == 500
        assert 1 <= drains <= 500  # one drain may wake many streams


def test_a_wake_while_a_drain_ends_is_not_lost() -> None:
    # A reader thread wakes a stream just as the loop's drain found nothing
    # left: the drain had already said "no drain due" (before looking), so
    # this wake schedules a new one. Made deterministic by a deque that runs
    # the racing wake from inside the drain's last emptiness check.
    import collections

    async def main() -> None:
        loop = asyncio.get_running_loop()
        waker = _waker_for(loop)
        first, late = loop.create_future(), loop.create_future()
        raced = []

        class RacingDeque(collections.deque):  # type: ignore[type-arg]
            def __bool__(self) -> bool:
                empty = len(self) == 0
                if empty and not raced:
                    raced.append(True)
                    racer = threading.Thread(target=waker.wake, args=(late,))
                    racer.start()
                    racer.join(5)
                return not empty

        waker._due = RacingDeque()
        waker.wake(first)
        await asyncio.wait_for(first, 5)
        await asyncio.wait_for(late, 2)  # never resolved if the racing wake was lost
        assert raced == [True]

    asyncio.run(main())


def test_a_wake_after_its_loop_closed_is_silent() -> None:
    loop = asyncio.new_event_loop()

    async def make() -> Any:
        return _waker_for(asyncio.get_running_loop()), asyncio.get_running_loop().create_future()

    waker, future = loop.run_until_complete(make())
    loop.close()
    waker.wake(future)  # no RuntimeError from the closed loop
    assert not future.done()


def test_a_cancelled_waiter_is_skipped_by_the_drain() -> None:
    async def main() -> bool:
        loop = asyncio.get_running_loop()
        waker = _waker_for(loop)
        cancelled, live = loop.create_future(), loop.create_future()
        cancelled.cancel()
        # Both woken before the loop runs its drain (the join blocks the loop):
        # the drain meets the cancelled one first and must go on to the live one.
        racer = threading.Thread(target=lambda: (waker.wake(cancelled), waker.wake(live)))
        racer.start()
        racer.join(5)
        await asyncio.wait_for(live, 2)
        return cancelled.cancelled()

    assert asyncio.run(main()) is True


# -- async streams on many loops, closed midway --------------------------------------------------


TOKENS = 40


def _expected(count: int) -> str:
    return "".join(("tok%d" % i) if i == 0 else (" tok%d" % i) for i in range(count))


def test_async_streams_on_four_loops_some_closed_midway(server: FakeLLMServer) -> None:
    server.default_reply = Reply(token_count=TOKENS, interval=0.002)
    client = llmstream.Client(base_url=server.base_url("openai"), api_key="k", max_buffered=4)
    outcomes: List[Tuple[int, Optional[int], str, str, str]] = []
    errors: List[BaseException] = []

    async def one(index: int, stop_after: Optional[int]) -> None:
        pieces: List[str] = []
        stream = client.astream("hi", model="m")
        try:
            async for piece in stream:
                pieces.append(piece)
                if len(pieces) == stop_after:
                    await stream.aclose()
                    break
                if index % 3 == 0:
                    await asyncio.sleep(0.003)  # a slow consumer: backpressure on the pipe
        finally:
            await stream.aclose()
        outcomes.append((index, stop_after, "".join(pieces), stream.text, stream.status))

    def loop_thread(base: int) -> None:
        async def main() -> None:
            await asyncio.wait_for(asyncio.gather(*[
                one(base + i, None if i % 2 else 1 + (base + i) % 7) for i in range(6)]), 20)

        try:
            asyncio.run(main())
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=loop_thread, args=(base,)) for base in (0, 10, 20, 30)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(25)
    try:
        assert errors == [] and len(outcomes) == 24
        for index, stop_after, got, text, status in outcomes:
            pieces = got.split(" ")
            if stop_after is None:
                assert (got, text, status) == (_expected(TOKENS), _expected(TOKENS), "finished"), index
            else:
                assert (len(pieces), got, status) == (stop_after, _expected(stop_after), "closed"), index
                # The stream may have delivered more than the caller took before it closed, never other text.
                assert _expected(TOKENS).startswith(text) and text.startswith(got), index
        assert wait_until(lambda: server.active_connections == 0, 5)
    finally:
        client.close()


# -- a body lent to the caller's thread, closed from another -----------------------------------


@pytest.mark.parametrize("after", [0, 1, 5])
def test_a_lent_body_closed_from_another_thread_mid_read(server: FakeLLMServer, after: int) -> None:
    # The consumer's thread reads the body itself (the lent body); close() from
    # here while it is blocked in that read must end its loop at once, cleanly.
    server.default_reply = Reply(token_count=10_000, interval=0.05)
    client = llmstream.Client(base_url=server.base_url("openai"), api_key="k")
    try:
        for _ in range(3):
            stream = client.stream("hi", model="m")
            got: List[str] = []
            errors: List[BaseException] = []
            enough = threading.Event()

            def consume() -> None:
                try:
                    for piece in stream:
                        got.append(piece)
                        if len(got) >= after:
                            enough.set()
                except BaseException as exc:  # reported below
                    errors.append(exc)

            consumer = threading.Thread(target=consume)
            consumer.start()
            if after:
                assert enough.wait(5)
            assert wait_thread_in(READING_BODY, [consumer])  # blocked in the lent body's read (a late caller's too: the worker lends it within one 50 ms token)
            stream.close()
            consumer.join(2)
            assert not consumer.is_alive() and errors == []
            assert stream.status == "closed" and len(got) >= after
            assert "".join(got) == _expected(len(got))
            assert stream._lent is None  # let go once closed
            with pytest.raises(llmstream.StreamClosedError):
                next(iter(stream))
        assert wait_until(lambda: server.active_connections == 0, 3)
    finally:
        client.close()
