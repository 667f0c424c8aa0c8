"""Resumable runs kept in Redis Streams: any process that reaches the Redis can serve a run's reconnect.

Strategy:
  * The process that ``start``s a run pumps the upstream stream into an
    in-memory :class:`~._runs.Run` (the same pump, merging and error frames as
    the memory store) and a forwarder thread copies that run's events to a
    Redis Stream: one pipeline per batch (``XADD`` with the relay event id as
    the entry id ``<id>-0``, ``MAXLEN``, ``EXPIRE``), so the ids a browser
    sees are the ids in Redis, and resuming after an id is ``XREAD`` after
    ``<id>-0``: every later event exactly once, from any process.
  * Ids are consecutive: a reader whose next event is not ``cursor + 1`` lost
    events to ``MAXLEN`` and is told so (:class:`~._runs.NotResumableError`),
    never given a gap.
  * ``stop`` from any process sets a stop key; the forwarder checks it in
    every pipeline (at least every ``POLL`` seconds) and closes the upstream.
  * Orphans: readers refresh a ``watched`` key (``EX orphan_timeout``); the
    forwarder stops a run whose key has expired.
  * Expiry: every key of a run has a TTL, refreshed while the run generates;
    a finished run goes ``ttl`` seconds after ``done``.
  * Redis down or slow: every call is bounded (connect and read timeouts, no
    client retries); a failure is a :class:`RunStoreError` (a
    ``NotResumableError``, so a relay body answers with an error frame).

Keys (``{prefix}`` is a Cluster hash tag): ``{prefix}:run:<id>`` (meta, a
string), ``{prefix}:run:<id>:events`` (the stream, fields ``e`` = event name
and ``d`` = JSON data), ``{prefix}:run:<id>:stop``, ``{prefix}:run:<id>:watched``.

Never: imports ``redis`` before a :class:`RedisRunStore` is made.
"""

from __future__ import annotations

import itertools
import json
import logging
import secrets as _secrets
import threading
import time
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple, Type, Union

from ._async import spawn
from ._runs import NotResumableError, RelayEvent, Run
from ._stream import TokenStream
from ._transport import redact_url

__all__ = ["RedisRunStore", "RedisRun", "RunStoreError"]

logger = logging.getLogger("llmstream")

#: The forwarder looks at the stop and watched keys at least this often (seconds).
POLL = 0.25
#: The forwarder waits this long after a batch so that tokens meanwhile join the next one.
FLUSH = 0.02
#: Longest single blocking XREAD (ms): a hung Redis costs at most this plus the timeout.
BLOCK_MS = 1000

_ids = itertools.count(1)


class RunStoreError(NotResumableError):
    """Raised when the run store (Redis) cannot be reached within its timeout.

    A ``NotResumableError``: a relay body serving the run answers with an
    ``error`` frame and ``done`` instead of hanging or cutting the body.
    """


def _dumps(data: Any) -> str:
    return json.dumps(data, ensure_ascii=False, separators=(",", ":"))


class RedisRun:
    """A run read from Redis (any process): what the relay's bodies read through."""

    def __init__(self, store: "RedisRunStore", run_id: str) -> None:
        self.id = run_id
        self._store = store
        self._keys = store._keys(run_id)
        self._watched_at = 0.0

    def _tail(self) -> Tuple[int, bool]:
        entries = self._store._call(self._store._redis.xrevrange, self._keys["events"], "+", "-", count=1)
        if not entries:
            return 0, False
        entry_id, fields = entries[0]
        return int(_text(entry_id).split("-")[0]), _text(fields[b"e"]) == "done"

    @property
    def finished(self) -> bool:
        """True once the ``done`` event is in Redis."""
        return self._tail()[1]

    @property
    def last_id(self) -> int:
        """The id of the newest event in Redis (0 before any)."""
        return self._tail()[0]

    def _decode(self, cursor: int, entries: List[Any]) -> List[RelayEvent]:
        out: List[RelayEvent] = []
        expected = cursor + 1
        for entry_id, fields in entries:
            event_id = int(_text(entry_id).split("-")[0])
            if event_id != expected:  # trimmed by MAXLEN: never hand out a gap
                raise NotResumableError(f"run {self.id!r} no longer holds the events after {cursor}")
            out.append((event_id, _text(fields[b"e"]), json.loads(fields[b"d"])))
            expected += 1
        return out

    def _read(self, cursor: int, block_ms: Optional[int]) -> List[RelayEvent]:
        store = self._store
        self._watch()
        client = store._redis if block_ms is None else store._blocking
        found = store._call(client.xread, {self._keys["events"]: f"{cursor}-0"}, block=block_ms)
        if not found:
            # Nothing new: an expired or never-started run must not look like a silent one.
            if not store._call(store._redis.exists, self._keys["meta"], self._keys["events"]):
                raise NotResumableError(f"run {self.id!r} is unknown or expired")
            return []
        return self._decode(cursor, found[0][1])

    def events_after(self, cursor: int) -> List[RelayEvent]:
        """The events after ``cursor`` in Redis (one round trip)."""
        return self._read(cursor, None)

    def wait_after(self, cursor: int, timeout: float) -> List[RelayEvent]:
        """Like :meth:`events_after`, waiting (blocking XREAD, in slices of a second) at most ``timeout`` seconds."""
        deadline = time.monotonic() + max(0.0, timeout)
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return self._read(cursor, None)
            found = self._read(cursor, max(1, min(BLOCK_MS, int(left * 1000))))
            if found:
                return found

    def _watch(self) -> None:
        # At most once a second: a reader keeps its run from being stopped as an orphan.
        store = self._store
        if store.orphan_timeout is None or time.monotonic() - self._watched_at < 1.0:
            return
        self._watched_at = time.monotonic()
        store._call(store._redis.set, self._keys["watched"], "1", px=int(store.orphan_timeout * 1000))

    def attach(self, waker: Optional[Callable[[], None]] = None) -> None:
        """A reader starts (Redis has no waker: the async body waits in a thread through :meth:`wait_after`)."""
        self._watched_at = 0.0
        self._watch()

    def detach(self, waker: Optional[Callable[[], None]] = None) -> None:
        """A reader ended: the ``watched`` key runs out by itself (a crashed reader leaves the same trace)."""

    def stop(self) -> None:
        """Cancel the run's upstream stream, wherever it runs."""
        self._store.stop(self.id)

    #: The relay's async body waits through ``wait_after`` in a worker thread (no waker from Redis).
    blocking_reads = True


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class RedisRunStore:
    """Runs kept in Redis Streams: any worker process (or machine) can serve a run's reconnect.

    Args:
        url: a ``redis://`` / ``rediss://`` / ``unix://`` URL, or a ready ``redis.Redis`` client.
        prefix: every key starts with ``{prefix}:run:`` (a Cluster hash tag).
        ttl: seconds a finished run stays resumable (a generating one stays).
        max_events: events kept per run (``XADD MAXLEN``; the oldest go first).
        orphan_timeout: a run that nobody reads for this long is stopped
            (its upstream stream closed); ``None``: never.
        timeout: the longest wait for one Redis call (connect and read), in seconds.
        secrets: extra strings to redact from error frames.

    Usage::

        runs = relay.RedisRunStore("redis://redis.internal:6379/0")
        run_id = runs.start(client.stream(prompt, model="gpt-4o-mini"))   # any process
        relay.flask_response(relay.run_body(runs, run_id, after=relay.last_event_id(request.headers, request.args)))

    The upstream stream runs in the process that called :meth:`start` (it
    must live until the run ends); :meth:`stop` reaches it from any process.
    Needs the ``redis`` extra: ``pip install "llmstream-sdk[redis]"``.

    Raises:
        RunStoreError: from :meth:`start`, :meth:`get` and :meth:`stop` (and
            as an error frame from a body) when Redis cannot be reached.
    """

    def __init__(self, url: Union[str, Any] = "redis://localhost:6379/0", *, prefix: str = "llmstream",
                 ttl: float = 300.0, max_events: int = 100_000, orphan_timeout: Optional[float] = 60.0,
                 timeout: float = 1.0, secrets: Iterable[str] = ()) -> None:
        try:
            import redis
            from redis.backoff import NoBackoff
            from redis.retry import Retry as RedisRetry
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise ImportError('llmstream.relay.RedisRunStore needs redis: pip install "llmstream-sdk[redis]"') from exc
        if not isinstance(prefix, str) or not prefix or "{" in prefix or "}" in prefix:
            raise ValueError(f"prefix must be a non-empty str without braces, got {prefix!r}")
        if max_events < 2:
            raise ValueError(f"max_events must be >= 2, got {max_events!r}")
        for name, value in (("ttl", ttl), ("timeout", timeout)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < float("inf"):
                raise ValueError(f"RedisRunStore.{name} must be a number > 0, got {value!r}")
        self.prefix = prefix
        self.ttl = float(ttl)
        self.max_events = max_events
        self.orphan_timeout = orphan_timeout
        self.timeout = float(timeout)
        self._secrets = tuple(secrets)
        if isinstance(url, str):
            self._where = redact_url(url)
            # Bounded: one timeout to connect, one to read, no retries of its own.
            options = dict(socket_connect_timeout=self.timeout, retry=RedisRetry(NoBackoff(), 0),
                           health_check_interval=0)
            self._redis: Any = redis.Redis.from_url(url, socket_timeout=self.timeout, **options)
            # Blocking XREADs wait up to BLOCK_MS on the server: their read timeout is longer.
            self._blocking: Any = redis.Redis.from_url(url, socket_timeout=self.timeout + BLOCK_MS / 1000, **options)
            self._owns_client = True
        else:
            self._where = type(url).__name__
            self._redis = self._blocking = url
            self._owns_client = False
        self._errors: Tuple[Type[BaseException], ...] = (redis.exceptions.RedisError, OSError)
        self._local: Dict[str, Run] = {}
        self._forwarders: List[threading.Event] = []
        self._closing = threading.Event()
        self._lock = threading.Lock()

    def _keys(self, run_id: str) -> Dict[str, str]:
        base = "{" + self.prefix + "}:run:" + run_id
        return {"meta": base, "events": base + ":events", "stop": base + ":stop", "watched": base + ":watched"}

    def _call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except self._errors as exc:
            raise RunStoreError(f"the run store (Redis at {self._where}) could not be reached: "
                                f"{type(exc).__name__}") from None

    # -- the store ---------------------------------------------------------------

    def start(self, stream: TokenStream) -> str:
        """Start a run from ``stream`` (pumped in this process, readable from any); return its id.

        Raises:
            RunStoreError: Redis cannot be reached (the stream is closed: no generation without a store).
        """
        run_id = _secrets.token_urlsafe(12)
        keys = self._keys(run_id)
        try:
            pipe = self._redis.pipeline(transaction=False)
            pipe.set(keys["meta"], "generating", px=int(self.ttl * 1000))
            if self.orphan_timeout is not None:
                pipe.set(keys["watched"], "1", px=int(self.orphan_timeout * 1000))
            self._call(pipe.execute)
        except RunStoreError:
            stream.close()
            raise
        # The pump starts only once Redis holds the run (no generation nobody can read).
        run = Run(stream, run_id=run_id, max_events=self.max_events, secrets=self._secrets, orphan_timeout=None)
        ended = threading.Event()
        with self._lock:
            self._local[run.id] = run
            self._forwarders.append(ended)
        spawn(self._forward, (run, ended), f"llmstream-relay-redis-{next(_ids)}")
        return run.id

    def get(self, run_id: str) -> RedisRun:
        """The run with this id (from any process).

        Raises:
            NotResumableError: unknown or expired.
            RunStoreError: Redis cannot be reached.
        """
        keys = self._keys(run_id)
        if not self._call(self._redis.exists, keys["meta"], keys["events"]):
            raise NotResumableError(f"run {run_id!r} is unknown or expired")
        return RedisRun(self, run_id)

    def stop(self, run_id: str) -> bool:
        """Cancel a run's upstream stream, in whichever process runs it; False if the run is unknown."""
        with self._lock:
            run = self._local.get(run_id)
        if run is not None:
            run.stop()
        keys = self._keys(run_id)
        if not self._call(self._redis.exists, keys["meta"], keys["events"]):
            return run is not None
        self._call(self._redis.set, keys["stop"], "1", px=int(self.ttl * 1000))
        return True

    def close(self) -> None:
        """Stop this process's runs and close the connections (a client given ready is left open)."""
        with self._lock:
            runs, forwarders = list(self._local.values()), list(self._forwarders)
        for run in runs:
            run.stop()
        for run in runs:
            run.join(5)
        # Each forwarder writes its "done" (bounded by the timeouts), then ends.
        deadline = time.monotonic() + 2 * self.timeout + 2 * POLL + 1
        for ended in forwarders:
            ended.wait(max(0.0, deadline - time.monotonic()))
        self._closing.set()
        if self._owns_client:
            self._redis.close()
            self._blocking.close()

    # -- the forwarder -----------------------------------------------------------

    def _forward(self, run: Run, ended: threading.Event) -> None:
        """Copy the run's events to Redis until ``done``; close the upstream on a stop key or an orphan."""
        keys = self._keys(run.id)
        ttl_ms = int(self.ttl * 1000)
        cursor = 0
        down_since: Optional[float] = None
        stopped = False
        pending: List[RelayEvent] = []
        try:
            while True:
                if not pending:
                    try:
                        pending = run.wait_after(cursor, POLL)
                    except NotResumableError:  # fell behind max_events: the gap shows to readers
                        pending = run.events_after(run.first_id - 1)  # the oldest kept on
                finished = bool(pending) and pending[-1][1] == "done"
                pipe = self._redis.pipeline(transaction=False)
                for event_id, name, data in pending:
                    pipe.xadd(keys["events"], {"e": name, "d": _dumps(data)}, id=f"{event_id}-0",
                              maxlen=self.max_events, approximate=False)
                pipe.set(keys["meta"], "finished" if finished else "generating", px=ttl_ms)
                pipe.pexpire(keys["events"], ttl_ms)
                pipe.exists(keys["stop"])
                pipe.exists(keys["watched"])
                try:
                    results = pipe.execute()
                except Exception as exc:  # redis-py raises more than RedisError on a connection closed under it
                    if self._closing.is_set():
                        return
                    now = time.monotonic()
                    down_since = down_since or now
                    if now - down_since > max(10.0, 3 * self.timeout) and not stopped:
                        # Nobody can read this run: stop paying for its generation.
                        logger.warning("llmstream: the run store (Redis at %s) is unreachable (%s); stopping run %s",
                                       self._where, type(exc).__name__, run.id)
                        run.stop()
                        stopped = True
                    if run.finished and now - down_since > max(10.0, 3 * self.timeout):
                        return
                    time.sleep(POLL)
                    continue
                down_since = None
                if pending:
                    cursor = pending[-1][0]
                pending = []
                if finished:
                    return
                stop_key, watched = results[-2], results[-1]
                if not stopped and (stop_key or (self.orphan_timeout is not None and not watched)):
                    run.stop()
                    stopped = True
                time.sleep(FLUSH)  # tokens meanwhile merge into one event
        finally:
            with self._lock:
                self._local.pop(run.id, None)
                self._forwarders.remove(ended)
            ended.set()
