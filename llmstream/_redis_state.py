"""Fleet-wide flow control through Redis: ``Client(shared=llmstream.RedisState(url))``.

Strategy:
  * One :class:`RedisState` (a connection pool, a prefix, a failure policy)
    builds a :class:`RedisFlow` per client: the same :class:`~._flow.FlowControl`
    seam as the in-process :class:`~._flow.Flow`, with the state in Redis so
    every client of every process that uses the same Redis and prefix shares
    one budget.
  * Atomic by Lua: each decision is one script, run by Redis alone, timed by
    Redis's own ``TIME`` (the clients' clocks never meet). Every key of one
    prefix carries the hash tag ``{prefix}``, so a script's keys sit in one
    Cluster slot.
  * Round-trips: one per attempt on the fast path (the ADMIT script: fleet
    pause, shared breaker, request and token buckets at once; on a stream's
    first attempt LEASE_ADMIT also takes its concurrency lease). One more at
    the stream's end (RELEASE: the lease back and the usage correction). The
    breaker's success on a closed circuit costs nothing.
  * Concurrency as leases: a holder is a member of a sorted set scored by its
    expiry; a thread of the process renews its leases every third of the
    lease time, so a crashed process's slots come free when their lease runs
    out. Waiters take a ticket in a FIFO queue (a sorted set scored by an
    INCR counter) and poll; the first ``free`` tickets may take a slot, a
    newcomer never jumps the line. A waiter that stops polling (its process
    died) drops out of the line after a few seconds.
  * Redis down or slow: every call has a bounded wait (socket connect and
    read timeouts, no client-side retries); after a failure Redis is left
    alone for ``retry_interval`` seconds. ``on_error="open"`` then uses this
    process's own limits (a warning log line; ``RedisState.fallbacks`` and
    ``monitor.snapshot().shared_state_fallbacks`` count the decisions);
    ``on_error="closed"`` fails the stream with ``SharedStateError``.

Never: imports ``redis`` before a :class:`RedisState` is made (the core runs
without the extra), holds a lock across a Redis call, or waits without a bound.
"""

from __future__ import annotations

import logging
import math
import os
import random
import socket
import threading
import time
import uuid
from typing import Any, Dict, List, Optional, Sequence, Tuple, Type, Union

from ._config import CircuitBreaker, RateLimit
from ._exceptions import APIStatusError, CircuitOpenError, SharedStateError, StreamError, StreamTimeoutError
from ._flow import Breaker, CancelFlag, Flow, FlowControl, SharedState, counts_as_failure
from ._monitor import monitor
from ._transport import Cancelled, redact_url

__all__ = ["RedisState", "RedisFlow"]

logger = logging.getLogger("llmstream")

ON_ERROR = ("open", "closed")

# Lua: every script reads the server clock itself, in milliseconds (float).
_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
"""

#: Refill a bucket (level, updated) to ``now``; rates are per millisecond.
_REFILL = """
local function refill(level, updated, rate, cap)
  if level == nil then return cap end
  return math.min(cap, level + (now - updated) * rate)
end
"""

#: admit(rate key, breaker key, a = ARGV offset): ARGV[a..a+6] = req rate/ms, req cap,
#: tok rate/ms, tok cap, tokens, breaker on (0/1), cooldown ms.
#: Returns {0, probe, failures} go | {1, wait ms} wait | {2, left ms, failures} circuit open.
_ADMIT_FN = _REFILL + """
local function admit(kr, kb, a)
  local probe = 0
  local failures = '0'
  local cooldown = tonumber(ARGV[a + 6])
  if ARGV[a + 5] == '1' then
    local b = redis.call('HMGET', kb, 'state', 'failures', 'opened', 'probe_until')
    failures = b[2] or '0'
    local state = b[1] or 'closed'
    if state ~= 'closed' then
      local left = tonumber(b[3] or '0') + cooldown - now
      if state == 'open' and left <= 0 then state = 'half-open' end
      if state == 'half-open' and tonumber(b[4] or '0') <= now then
        probe = 1
      else
        return {2, tostring(math.max(0, left)), failures}
      end
    end
  end
  local r = redis.call('HMGET', kr, 'req', 'req_t', 'tok', 'tok_t', 'pause')
  local wait = tonumber(r[5] or '0') - now
  local rr, rc, tr, tc = tonumber(ARGV[a]), tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3])
  local tokens = tonumber(ARGV[a + 4])
  local req, tok
  if rr > 0 then
    req = refill(tonumber(r[1]), tonumber(r[2]), rr, rc)
    local missing = math.min(1, rc) - req
    if missing > 0 then wait = math.max(wait, missing / rr) end
  end
  if tr > 0 then
    tok = refill(tonumber(r[3]), tonumber(r[4]), tr, tc)
    local missing = math.min(tokens, tc) - tok
    if missing > 0 then wait = math.max(wait, missing / tr) end
  end
  if wait > 0 then return {1, tostring(wait)} end
  local ttl = 1000
  if rr > 0 then
    req = req - 1
    redis.call('HSET', kr, 'req', tostring(req), 'req_t', tostring(now))
    ttl = math.max(ttl, (rc - req) / rr + 1000)
  end
  if tr > 0 then
    -- A request bigger than the bucket waits for a full one, then leaves a debt.
    tok = tok - tokens
    redis.call('HSET', kr, 'tok', tostring(tok), 'tok_t', tostring(now))
    ttl = math.max(ttl, (tc - tok) / tr + 1000)
  end
  if rr > 0 or tr > 0 then
    redis.call('PEXPIRE', kr, math.ceil(ttl + math.max(0, tonumber(r[5] or '0') - now)))
  end
  if probe == 1 then
    redis.call('HSET', kb, 'state', 'half-open', 'probe_until', tostring(now + cooldown))
  end
  return {0, probe, failures}
end
"""

#: lease(leases, queue, alive, seq keys, a = ARGV offset): ARGV[a..a+3] = id, limit, lease ms, alive ms.
#: Returns {granted 0/1, rank in the line, free slots}.
_LEASE_FN = """
local function lease(kl, kq, ka, ks, a)
  local id, limit = ARGV[a], tonumber(ARGV[a + 1])
  local lease_ms, alive_ms = tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3])
  redis.call('ZREMRANGEBYSCORE', kl, '-inf', now)
  local dead = redis.call('ZRANGEBYSCORE', ka, '-inf', now)
  for _, d in ipairs(dead) do redis.call('ZREM', kq, d) end
  if #dead > 0 then redis.call('ZREMRANGEBYSCORE', ka, '-inf', now) end
  if redis.call('ZSCORE', kl, id) then return {1, 0, 0} end
  local free = limit - redis.call('ZCARD', kl)
  local rank = redis.call('ZRANK', kq, id)
  if not rank then
    if free > 0 and redis.call('ZCARD', kq) == 0 then
      redis.call('ZADD', kl, now + lease_ms, id)
      redis.call('PEXPIRE', kl, lease_ms * 2)
      return {1, 0, free - 1}
    end
    redis.call('ZADD', kq, redis.call('INCR', ks), id)
    rank = redis.call('ZRANK', kq, id)
  end
  if rank < free then
    redis.call('ZREM', kq, id)
    redis.call('ZREM', ka, id)
    redis.call('ZADD', kl, now + lease_ms, id)
    redis.call('PEXPIRE', kl, lease_ms * 2)
    return {1, rank, free - 1}
  end
  redis.call('ZADD', ka, now + alive_ms, id)
  for _, k in ipairs({kq, ka, ks}) do redis.call('PEXPIRE', k, alive_ms * 4) end
  return {0, rank, free}
end
"""

#: correct(rate key, a = ARGV offset): ARGV[a..a+2] = tokens to charge (negative: refund), tok rate/ms, tok cap.
_CORRECT_FN = """
local function correct(kr, a)
  local r = redis.call('HMGET', kr, 'tok', 'tok_t')
  local tr, tc = tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2])
  local tok = math.min(tc, refill(tonumber(r[1]), tonumber(r[2]), tr, tc) - tonumber(ARGV[a]))
  redis.call('HSET', kr, 'tok', tostring(tok), 'tok_t', tostring(now))
  local left = redis.call('PTTL', kr)
  redis.call('PEXPIRE', kr, math.ceil(math.max(left, (tc - tok) / tr + 1000)))
  return tostring(tok)
end
"""

# KEYS: rate hash, breaker hash. ARGV: the admit arguments.
ADMIT = _NOW + _ADMIT_FN + "return admit(KEYS[1], KEYS[2], 1)"

# KEYS: leases, queue, queue alive, ticket counter. ARGV: the lease arguments.
LEASE = _NOW + _LEASE_FN + "return lease(KEYS[1], KEYS[2], KEYS[3], KEYS[4], 1)"

# A stream's first attempt: its lease and its admission in one round-trip.
# KEYS: leases, queue, queue alive, ticket counter, rate hash, breaker hash.
# ARGV: the lease arguments (4), then the admit arguments (7).
# Returns {3, rank, free} when the lease is not granted (nothing admitted), else admit's reply.
LEASE_ADMIT = _NOW + _LEASE_FN + _ADMIT_FN + """
local l = lease(KEYS[1], KEYS[2], KEYS[3], KEYS[4], 1)
if l[1] == 0 then return {3, l[2], l[3]} end
return admit(KEYS[5], KEYS[6], 5)
"""

# KEYS: rate hash. ARGV: the correct arguments.
CORRECT = _NOW + _REFILL + _CORRECT_FN + "return correct(KEYS[1], 1)"

# A stream's end: its lease back and its usage correction in one round-trip.
# KEYS: leases, rate hash. ARGV: id, then the correct arguments (or nothing: no correction).
RELEASE = _NOW + _REFILL + _CORRECT_FN + """
redis.call('ZREM', KEYS[1], ARGV[1])
if #ARGV > 1 then correct(KEYS[2], 2) end
return 1
"""

# KEYS: rate hash. ARGV: seconds ms, req rate/ms, req cap.
PAUSE = _NOW + """
local r = redis.call('HMGET', KEYS[1], 'pause')
local pause = math.max(tonumber(r[1] or '0'), now + tonumber(ARGV[1]))
redis.call('HSET', KEYS[1], 'pause', tostring(pause))
local rr, rc = tonumber(ARGV[2]), tonumber(ARGV[3])
local ttl = pause - now + 1000
if rr > 0 then
  -- After the pause one request may go, then the budget refills: a gradual restart, not a burst.
  redis.call('HSET', KEYS[1], 'req', tostring(math.min(1, rc)), 'req_t', tostring(pause))
  ttl = ttl + rc / rr
end
local left = redis.call('PTTL', KEYS[1])
redis.call('PEXPIRE', KEYS[1], math.ceil(math.max(ttl, left)))
return tostring(pause - now)
"""

# KEYS: breaker hash. ARGV: probe (0/1), outcome ('fail' | 'ok' | 'none'), threshold.
RECORD = _NOW + """
if ARGV[1] == '1' then redis.call('HDEL', KEYS[1], 'probe_until') end
local state = redis.call('HGET', KEYS[1], 'state') or 'closed'
local failures = tonumber(redis.call('HGET', KEYS[1], 'failures') or '0')
if ARGV[2] == 'fail' then
  failures = redis.call('HINCRBY', KEYS[1], 'failures', 1)
  -- Attempts already in flight when it opened do not extend the cooldown.
  if ARGV[1] == '1' or (state == 'closed' and failures >= tonumber(ARGV[3])) then
    state = 'open'
    redis.call('HSET', KEYS[1], 'state', 'open', 'opened', tostring(now))
  end
elseif ARGV[2] == 'ok' then
  failures = 0
  state = 'closed'
  redis.call('HSET', KEYS[1], 'failures', 0, 'state', 'closed')
end
redis.call('PEXPIRE', KEYS[1], 86400000)
return {state, failures}
"""

# KEYS: breaker hash. ARGV: cooldown ms. Returns {state, failures}.
BREAKER_STATE = _NOW + """
local b = redis.call('HMGET', KEYS[1], 'state', 'failures', 'opened')
local state = b[1] or 'closed'
if state == 'open' and tonumber(b[3] or '0') + tonumber(ARGV[1]) <= now then state = 'half-open' end
return {state, b[2] or '0'}
"""

# KEYS: queue, queue alive. ARGV: id. A waiter leaves the line.
LEAVE = """
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
return 1
"""

# KEYS: leases. ARGV: lease ms, ids... Returns the ids that were no longer held.
RENEW = _NOW + """
local lost = {}
for i = 2, #ARGV do
  if redis.call('ZSCORE', KEYS[1], ARGV[i]) then
    redis.call('ZADD', KEYS[1], 'XX', now + tonumber(ARGV[1]), ARGV[i])
  else
    table.insert(lost, ARGV[i])
  end
end
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[1]) * 2)
return lost
"""

#: Seconds a waiter may go without polling before it is dropped from the line.
WAITER_ALIVE = 5.0
#: How often a waiter polls: the head of the line often, the back less.
POLL_MIN, POLL_STEP, POLL_MAX = 0.005, 0.002, 0.25


class _Unavailable(Exception):
    """Redis could not be reached (or answered with an error) within the bounded wait."""


class _Lease:
    """One stream's concurrency slot: taken with its first attempt's admission, in one round-trip.

    ``state``: ``"pending"`` (not asked for yet, or waiting in the line),
    ``"held"`` (a Redis lease, renewed by the process) or ``"local"`` (a slot
    of the process's own limit, taken while Redis was unreachable: fail-open).
    """

    __slots__ = ("id", "args", "state")

    def __init__(self, lease_id: str, args: List[Any]) -> None:
        self.id = lease_id
        self.args = args
        self.state = "pending"


def _outcome(error: Optional[BaseException]) -> str:
    if isinstance(error, StreamError) and counts_as_failure(error):
        return "fail"
    if error is None or isinstance(error, APIStatusError):
        return "ok"
    return "none"


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class RedisState(SharedState):
    """Share ``max_concurrent``, ``rate_limit``, the 429 pause (and the breaker) across a fleet through Redis.

    Args:
        url: a ``redis://`` / ``rediss://`` / ``unix://`` URL, or a ready
            ``redis.Redis`` (or ``redis.cluster.RedisCluster``) client.
        prefix: every key starts with ``{prefix}:`` (a Cluster hash tag).
            Clients that use the same Redis and prefix share one budget; use
            one prefix per account (or per key) whose limits you share.
        on_error: what a client does when Redis cannot be reached within
            ``timeout``: ``"open"`` (default) falls back to this process's
            own limits, logs a warning and counts :attr:`fallbacks`;
            ``"closed"`` fails the stream with :class:`SharedStateError`.
        timeout: the longest wait for one Redis call (connect and read), in seconds.
        retry_interval: after a failure, Redis is left alone for this many
            seconds (each call goes straight to the ``on_error`` policy), so
            a dead Redis costs one ``timeout``, not one per attempt.
        lease: seconds a concurrency slot stays held without renewal; a
            process renews its slots every ``lease / 3``, so a crashed
            process's slots come free within ``lease``.
        share_breaker: also share the circuit breaker (``Client(circuit_breaker=...)``)
            state per base URL across the fleet (default: each client's own).

    Usage::

        shared = llmstream.RedisState("redis://redis.internal:6379/0", prefix="llmstream:acme")
        client = llmstream.Client(max_concurrent=50, rate_limit=llmstream.RateLimit(requests_per_minute=5000),
                                  shared=shared)

    Needs the ``redis`` extra: ``pip install "llmstream-sdk[redis]"``. One
    ``RedisState`` may serve many clients and threads; :meth:`close` ends its
    connections.
    """

    def __init__(self, url: Union[str, Any] = "redis://localhost:6379/0", *, prefix: str = "llmstream",
                 on_error: str = "open", timeout: float = 0.5, retry_interval: float = 1.0,
                 lease: float = 30.0, share_breaker: bool = False) -> None:
        try:
            import redis
            from redis.backoff import NoBackoff
            from redis.retry import Retry as RedisRetry
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise ImportError('llmstream.RedisState needs redis: pip install "llmstream-sdk[redis]"') from exc
        if not isinstance(prefix, str) or not prefix or "{" in prefix or "}" in prefix:
            raise ValueError(f"prefix must be a non-empty str without braces, got {prefix!r}")
        if on_error not in ON_ERROR:
            raise ValueError(f"on_error must be 'open' or 'closed', got {on_error!r}")
        for name, value in (("timeout", timeout), ("retry_interval", retry_interval), ("lease", lease)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < float("inf"):
                raise ValueError(f"RedisState.{name} must be a number > 0, got {value!r}")
        if lease <= 2 * timeout:
            raise ValueError(f"RedisState.lease ({lease!r}) must be longer than twice the timeout ({timeout!r})")
        self.prefix = prefix
        self.on_error = on_error
        self.timeout = float(timeout)
        self.retry_interval = float(retry_interval)
        self.lease = float(lease)
        self.share_breaker = bool(share_breaker)
        if isinstance(url, str):
            self._where = redact_url(url)
            # Bounded: one timeout to connect, one to read, and no retries of
            # its own (redis-py retries 3 times with backoff by default).
            self._redis: Any = redis.Redis.from_url(
                url, socket_timeout=self.timeout, socket_connect_timeout=self.timeout,
                retry=RedisRetry(NoBackoff(), 0), health_check_interval=0,
            )
            self._owns_client = True
        else:
            self._where = type(url).__name__
            self._redis = url
            self._owns_client = False
        self._errors: Tuple[Type[BaseException], ...] = (redis.exceptions.RedisError, OSError)
        self._scripts = {name: self._redis.register_script(source) for name, source in (
            ("admit", ADMIT), ("lease_admit", LEASE_ADMIT), ("pause", PAUSE), ("correct", CORRECT),
            ("release", RELEASE), ("record", RECORD), ("breaker_state", BREAKER_STATE), ("lease", LEASE),
            ("leave", LEAVE), ("renew", RENEW))}
        tag = "{" + prefix + "}"
        self.keys = {"rate": f"{tag}:rate", "leases": f"{tag}:leases", "queue": f"{tag}:queue",
                     "alive": f"{tag}:queue:alive", "seq": f"{tag}:queue:seq"}
        self._lock = threading.Lock()
        self._down_until = 0.0
        self._down = False
        self._fallbacks = 0
        self._failures = 0
        self._held: Dict[str, float] = {}
        self._renewer: Optional[threading.Thread] = None
        self._closing = threading.Event()
        self._owner = f"{socket.gethostname()}:{os.getpid()}"

    # -- public -----------------------------------------------------------------------

    @property
    def fallbacks(self) -> int:
        """Decisions taken with this process's own limits because Redis was unreachable (fail-open)."""
        return self._fallbacks

    @property
    def failures(self) -> int:
        """Redis calls that failed or timed out (each one bounded by ``timeout``)."""
        return self._failures

    @property
    def available(self) -> bool:
        """False while Redis is considered down (after a failure, for ``retry_interval`` seconds)."""
        return not self._down or time.monotonic() >= self._down_until

    def flow(self, *, base_url: str, max_concurrent: Optional[int], rate_limit: Optional[RateLimit],
             circuit_breaker: Optional[CircuitBreaker]) -> FlowControl:
        """The fleet-wide flow control of one client with these limits (called by ``Client``)."""
        return RedisFlow(self, base_url=base_url, max_concurrent=max_concurrent, rate_limit=rate_limit,
                         circuit_breaker=circuit_breaker)

    def close(self) -> None:
        """Stop renewing leases and close the connections (slots still held expire with their lease)."""
        self._closing.set()
        renewer = self._renewer
        if renewer is not None and renewer is not threading.current_thread():
            renewer.join(self.timeout * 4)
        if self._owns_client:
            self._redis.close()

    def __enter__(self) -> "RedisState":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"RedisState({self._where!r}, prefix={self.prefix!r}, on_error={self.on_error!r}, "
                f"timeout={self.timeout!r}, lease={self.lease!r}, share_breaker={self.share_breaker!r})")

    # -- calls to Redis ---------------------------------------------------------------

    def call(self, script: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """Run one script; raise ``_Unavailable`` (bounded by ``timeout``) when Redis cannot answer."""
        if self._down and time.monotonic() < self._down_until:
            raise _Unavailable(f"Redis at {self._where} was unreachable less than {self.retry_interval:g}s ago")
        try:
            result = self._scripts[script](keys=list(keys), args=list(args))
        except self._errors as exc:
            self._failed(exc)
            raise _Unavailable(f"Redis at {self._where} is unreachable: {type(exc).__name__}: {exc}") from exc
        if self._down:
            self._down = False
            logger.warning("llmstream: Redis at %s is reachable again; the fleet's shared limits apply again",
                           self._where)
        return result

    def _failed(self, exc: BaseException) -> None:
        with self._lock:
            self._failures += 1
            first = not self._down
            self._down = True
            self._down_until = time.monotonic() + self.retry_interval
        if first:
            policy = ("this process's own limits apply until it is back (fail-open)" if self.on_error == "open"
                      else "streams fail with SharedStateError until it is back (fail-closed)")
            # Strings only: a record holding the exception would keep its frames (and streams) alive.
            logger.warning("llmstream: Redis at %s is unreachable (%s: %s); %s",
                           self._where, type(exc).__name__, str(exc), policy)

    def unavailable(self, cause: _Unavailable) -> None:
        """Apply ``on_error``: count a fallback (open) or raise ``SharedStateError`` (closed)."""
        if self.on_error == "closed":
            raise SharedStateError(f"{cause}; RedisState(on_error='closed') does not go past the fleet's limits")
        with self._lock:
            self._fallbacks += 1
        monitor.shared_state_fallback()

    # -- leases -----------------------------------------------------------------------

    def new_lease_id(self) -> str:
        """A lease id that says which host and process hold it (for whoever reads Redis)."""
        return f"{self._owner}:{uuid.uuid4().hex[:12]}"

    def hold(self, lease_id: str) -> None:
        """Remember a lease to renew it until :meth:`forget`."""
        with self._lock:
            self._held[lease_id] = time.monotonic()
            if self._renewer is None or not self._renewer.is_alive():
                self._renewer = threading.Thread(target=self._renew_loop, name="llmstream-redis-leases", daemon=True)
                self._renewer.start()

    def forget(self, lease_id: str) -> None:
        """Stop renewing a lease (given back, or given up)."""
        with self._lock:
            self._held.pop(lease_id, None)

    def _renew_loop(self) -> None:
        period = self.lease / 3
        while not self._closing.wait(period):
            with self._lock:
                held = list(self._held)
                if not held:
                    self._renewer = None
                    return
            try:
                lost = self.call("renew", [self.keys["leases"]], [int(self.lease * 1000), *held])
            except _Unavailable:
                continue
            except Exception:  # closed under it, or a bug: this thread must go on renewing
                logger.debug("llmstream: renewing Redis leases failed", exc_info=True)
                continue
            with self._lock:
                lost = [_text(x) for x in lost if _text(x) in self._held]
            if lost:
                logger.warning("llmstream: %d concurrency lease(s) expired before renewal (the process stalled "
                               "longer than RedisState.lease=%gs); the fleet may briefly exceed max_concurrent",
                               len(lost), self.lease)


class _SharedBreakerView:
    """The shared breaker as this process last saw it, for ``llmstream.monitor`` (no Redis call)."""

    def __init__(self, base_url: str, cooldown: float) -> None:
        self.base_url = base_url
        self._cooldown = cooldown
        self._state = "closed"
        self._open_until = 0.0

    def seen(self, state: str, left: Optional[float] = None) -> None:
        self._state = state
        if left is not None:
            self._open_until = time.monotonic() + left

    @property
    def state(self) -> str:
        if self._state == "open" and time.monotonic() >= self._open_until:
            return "half-open"
        return self._state


class RedisFlow(FlowControl):
    """One client's flow control, shared with the fleet through a :class:`RedisState`.

    It keeps a local :class:`~._flow.Flow` with the same limits: the fail-open
    fallback, and the home of the breaker when the breaker is not shared.
    """

    def __init__(self, state: RedisState, *, base_url: str, max_concurrent: Optional[int],
                 rate_limit: Optional[RateLimit], circuit_breaker: Optional[CircuitBreaker]) -> None:
        self.base_url = base_url
        self._state = state
        shared_breaker = circuit_breaker is not None and state.share_breaker
        self._local = Flow(base_url=base_url, max_concurrent=max_concurrent, rate_limit=rate_limit,
                           circuit_breaker=None if shared_breaker else circuit_breaker)
        self._breaker_config = circuit_breaker if shared_breaker else None
        self._fallback_breaker = Breaker(circuit_breaker, base_url) if shared_breaker and circuit_breaker else None
        self._view: Optional[_SharedBreakerView] = None
        if self._breaker_config is not None:
            self._view = _SharedBreakerView(base_url, self._breaker_config.cooldown)
            monitor.register_breaker(self._view)
        self.limit = max_concurrent
        self.has_slots = max_concurrent is not None
        self.counts_tokens = self._local.counts_tokens
        rpm = rate_limit.requests_per_minute if rate_limit is not None else None
        tpm = rate_limit.tokens_per_minute if rate_limit is not None else None
        burst = rate_limit.burst_seconds if rate_limit is not None else 0.0
        # Rates per millisecond and capacities, as the local buckets compute them.
        self._req = (rpm / 60000.0, max(1.0, rpm / 60.0 * burst)) if rpm else (0.0, 0.0)
        self._tok = (tpm / 60000.0, max(1.0, tpm / 60.0 * burst)) if tpm else (0.0, 0.0)
        breaker_key = f"{{{state.prefix}}}:breaker:" + (base_url if self._breaker_config else "-")
        self._keys = [state.keys["rate"], breaker_key]
        self._seen_failures = 0
        self._waiters: Dict[str, Tuple[int, threading.Event]] = {}
        self._waiters_lock = threading.Lock()

    # -- concurrency ------------------------------------------------------------------

    def acquire_slot(self, cancel: CancelFlag, deadline: float) -> object:
        """A lease to take with the stream's first attempt (:meth:`enter`): no round-trip of its own."""
        state = self._state
        lease_id = state.new_lease_id()
        return _Lease(lease_id, [lease_id, self.limit, int(state.lease * 1000), int(WAITER_ALIVE * 1000)])

    def release_slot(self, lease: object, correction: Optional[float] = None) -> None:
        """Give the lease back with the usage correction (one round-trip); wake this process's first waiter."""
        if isinstance(lease, _Lease) and lease.state == "held":
            self._state.forget(lease.id)
            args: List[Any] = [lease.id]
            if self.counts_tokens and correction and math.isfinite(correction):
                args += [repr(float(correction)), repr(self._tok[0]), repr(self._tok[1])]
            try:
                self._state.call("release", [self._state.keys["leases"], self._keys[0]], args)
            except _Unavailable:
                # The lease expires on its own; the correction is this process's to keep.
                if correction is not None:
                    self._local.correct(correction)
        else:
            if isinstance(lease, _Lease) and lease.state == "local":
                assert self._local.slots is not None
                self._local.slots.release()
            if correction is not None:
                self.correct(correction)
        with self._waiters_lock:
            head = min(self._waiters.values(), key=lambda w: w[0], default=None)
        if head is not None:
            head[1].set()

    def wake(self) -> None:
        """Wake every waiter of this client (a cancelled one leaves the line at once)."""
        self._local.wake()
        with self._waiters_lock:
            events = [event for _, event in self._waiters.values()]
        for event in events:
            event.set()

    def _leave_line(self, lease: _Lease) -> None:
        try:
            self._state.call("leave", [self._state.keys["queue"], self._state.keys["alive"]], [lease.id])
        except _Unavailable:
            pass  # the line drops a waiter that stopped polling

    # -- attempts ---------------------------------------------------------------------

    def enter(self, tokens: float, cancel: CancelFlag, deadline: float,
              lease: object = None) -> Tuple[float, bool]:
        """One script per try: (the lease,) the fleet pause, the shared breaker and the shared budgets at once."""
        local_breaker = self._local.breaker
        probe = local_breaker.admit() if local_breaker is not None else False
        try:
            waited, shared_probe = self._enter_shared(tokens, cancel, deadline, lease)
        except BaseException:
            if probe and local_breaker is not None:
                local_breaker.record(True, Cancelled())  # a probe that never went out is freed
            raise
        return waited, probe or shared_probe

    def _enter_shared(self, tokens: float, cancel: CancelFlag, deadline: float,
                      lease: object) -> Tuple[float, bool]:
        started = time.monotonic()
        state = self._state
        config = self._breaker_config
        args: List[Any] = [repr(self._req[0]), repr(self._req[1]), repr(self._tok[0]), repr(self._tok[1]),
                           repr(float(tokens)), "1" if config is not None else "0",
                           int(config.cooldown * 1000) if config is not None else 0]
        pending = lease if isinstance(lease, _Lease) and lease.state == "pending" else None
        lease_keys = [state.keys["leases"], state.keys["queue"], state.keys["alive"], state.keys["seq"]]
        woken = threading.Event()
        waiting = False
        try:
            while True:
                try:
                    if pending is not None:
                        reply = state.call("lease_admit", lease_keys + self._keys, pending.args + args)
                    else:
                        reply = state.call("admit", self._keys, args)
                except _Unavailable as exc:
                    state.unavailable(exc)  # raises when failing closed
                    if pending is not None:
                        assert self._local.slots is not None
                        self._local.slots.acquire(cancel, deadline)
                        pending.state = "local"
                    return self._enter_locally(tokens, cancel, deadline, started)
                code = int(reply[0])
                now = time.monotonic()
                if pending is not None and code != 3:
                    pending.state = "held"
                    state.hold(pending.id)
                    pending = None
                if code == 0:
                    self._seen_failures = int(reply[2])
                    probe = int(reply[1]) == 1
                    if self._view is not None:
                        self._view.seen("half-open" if probe else "closed")
                    return now - started, probe
                if code == 2:
                    left = float(_text(reply[1])) / 1000
                    assert self._view is not None
                    self._view.seen("open" if left > 0 else "half-open", left)
                    what = "a probe request is in flight" if left <= 0 else f"retrying in {left:.1f}s"
                    raise CircuitOpenError(
                        f"circuit open for {self.base_url} after {int(reply[2])} consecutive failures "
                        f"({what}; shared through Redis)", retry_after=max(0.0, left), base_url=self.base_url)
                if not waiting:
                    waiting = True
                    monitor.waiting(1)
                if code == 3:
                    assert pending is not None
                    self._wait_in_line(pending, int(reply[1]), int(reply[2]), woken, cancel, deadline)
                    continue
                wait = float(_text(reply[1])) / 1000
                if now + wait >= deadline:
                    raise StreamTimeoutError("total timeout: the stream's Timeout.total passed while waiting for "
                                             "the client's rate limiter (shared through Redis)", kind="total")
                # A little jitter: waiters of several processes that computed the
                # same wait do not all ask again in the same millisecond.
                if cancel.wait(wait * random.uniform(1.0, 1.05)):
                    raise Cancelled()
        finally:
            if waiting:
                monitor.waiting(-1)
            if pending is not None:
                with self._waiters_lock:
                    self._waiters.pop(pending.id, None)

    def _wait_in_line(self, lease: _Lease, rank: int, free: int, woken: threading.Event,
                      cancel: CancelFlag, deadline: float) -> None:
        """Wait before asking for the lease again; leave the line when cancelled or out of time."""
        with self._waiters_lock:
            self._waiters[lease.id] = (rank, woken)
        left = deadline - time.monotonic()
        if cancel.is_set() or left <= 0:
            self._leave_line(lease)
            if cancel.is_set():
                raise Cancelled()
            raise StreamTimeoutError(
                "total timeout: the stream's Timeout.total passed while waiting for a free slot "
                f"(Client(max_concurrent={self.limit}), shared through Redis)", kind="total")
        # The head of the line asks often, the back less; a local release wakes the head at once.
        poll = min(POLL_MAX, POLL_MIN + POLL_STEP * max(0, rank - free)) * random.uniform(0.8, 1.2)
        woken.wait(min(poll, left))
        woken.clear()

    def _enter_locally(self, tokens: float, cancel: CancelFlag, deadline: float,
                       started: float) -> Tuple[float, bool]:
        probe = self._fallback_breaker.admit() if self._fallback_breaker is not None else False
        limiter = self._local.limiter
        if limiter.unlimited:
            return time.monotonic() - started, probe
        try:
            limiter.acquire(tokens, cancel, deadline)
        except BaseException:
            if probe and self._fallback_breaker is not None:
                self._fallback_breaker.record(True, Cancelled())
            raise
        return time.monotonic() - started, probe

    def record(self, probe: bool, error: Optional[BaseException]) -> None:
        """The attempt's outcome to the breaker; a success on a closed shared circuit costs no round-trip."""
        if self._local.breaker is not None:
            self._local.breaker.record(probe, error)
            return
        config = self._breaker_config
        if config is None:
            return
        outcome = _outcome(error)
        if not probe and (outcome == "none" or (outcome == "ok" and self._seen_failures == 0)):
            return
        try:
            state, failures = self._state.call("record", self._keys[1:], ["1" if probe else "0", outcome,
                                                                         config.failure_threshold])
        except _Unavailable:
            if self._fallback_breaker is not None:
                self._fallback_breaker.record(probe, error)
            return
        self._seen_failures = int(failures)
        if self._view is not None:
            state = _text(state)
            self._view.seen(state, config.cooldown if state == "open" else None)

    def pause(self, seconds: float) -> None:
        """Pause the whole fleet (and this process, in case Redis is down when it next asks)."""
        self._local.pause(seconds)
        try:
            self._state.call("pause", self._keys[:1], [int(seconds * 1000), repr(self._req[0]), repr(self._req[1])])
        except _Unavailable:
            pass  # the local pause holds this process; the others see their own 429s

    def correct(self, tokens: float) -> None:
        """Correct the fleet's token budget with a stream's reported usage (atomically, in Redis)."""
        # The decoders refuse non-finite counts; this is the second line of defence.
        if not self.counts_tokens or not tokens or not math.isfinite(tokens):
            return
        try:
            self._state.call("correct", self._keys[:1], [repr(float(tokens)), repr(self._tok[0]), repr(self._tok[1])])
        except _Unavailable:
            self._local.correct(tokens)

    @property
    def circuit_state(self) -> Optional[str]:
        """The breaker's state: read from Redis when shared (the last seen state if Redis is down)."""
        if self._local.breaker is not None:
            return self._local.breaker.state
        config = self._breaker_config
        if config is None or self._view is None:
            return None
        try:
            state, _ = self._state.call("breaker_state", self._keys[1:], [int(config.cooldown * 1000)])
        except _Unavailable:
            return self._view.state
        return _text(state)
