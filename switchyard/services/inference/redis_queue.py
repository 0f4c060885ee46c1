"""Workers on the meeting system's Redis List queues (docs/inference.md).

Producers ``LPUSH`` JSON tasks onto ``critical_queue``, ``high_queue``,
``normal_queue`` or ``low_queue``. A :class:`QueueWorker` takes tasks with Lua scripts
run by Redis, so each step is atomic across any number of workers on any hosts:

* **take**: the oldest entry (``RIGHT``) of the first non-empty queue in priority order
  is ``LMOVE``\\ d onto ``processing_queue`` (``LEFT``) and its start time (Redis
  ``TIME``) and source queue are written to hash ``processing_started`` in the same
  script. Critical is always served before high, high before normal, normal before low.
  With every queue empty, the worker polls again after ``idle_poll`` seconds (a
  Redis client cannot block on several lists and move atomically at once).
* **finish**: ``SET done:<id> NX EX dedup_ttl``; only when that succeeds is the event
  ``PUBLISH``\\ ed on ``ai_events`` (and a dead letter written); then ``LREM`` from
  ``processing_queue``. One script, so a task that was reaped and run twice still
  yields exactly one ``.completed`` or ``.failed`` event.
* **retry**: a failed task with ``retry_count < max_retries`` is replaced by a copy with
  ``retry_count + 1`` at the tail of its queue; after that it goes to
  ``dead_letter_queue`` with its error and one ``.failed`` event is published. An entry
  that is not a task (not JSON, no or unknown type) goes there at once.
* **reap**: every ``reap_interval`` seconds each worker returns entries older than
  ``visibility_timeout`` from ``processing_queue`` to the head of their queue (a worker
  that died mid-task loses nothing). Each entry's ``processing_started`` value names
  the worker that took it, so whoever sees a worker die (its parent actor) can return
  that worker's entries at once (:meth:`QueueWorker.reap_owner`); a worker that is
  stopped (cancelled, SIGTERM) returns its own. An entry reaped more than ``max_retries`` times
  is dead-lettered instead (a task that kills its worker cannot loop forever).

A task that runs longer than ``visibility_timeout`` is run again by another worker; its
event is still published once. Keys live in one Redis database (not Redis Cluster:
the scripts touch several keys that would need one hash slot).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import attrs
import coredis
import trio

from switchyard.runtime.ratelog import RateLimitedLog
from switchyard.services.inference.protocol import TaskReply, _utc_stamp
from switchyard.services.inference.redis_tasks import (
    PoisonTask,
    QueueTask,
    dead_letter_entry,
    event_json,
    parse_task,
    with_retry,
)

__all__ = [
    "DEFAULT_REDIS_URL",
    "QUEUES",
    "QueueConfig",
    "QueueKeys",
    "QueueWorker",
    "Runner",
    "default_worker_id",
    "open_redis",
    "redis_url",
]

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
QUEUES = ("critical_queue", "high_queue", "normal_queue", "low_queue")

#: A task runner: ``(task) -> reply``; it must not raise for bad input.
Runner = Callable[[QueueTask], Awaitable[TaskReply]]


def redis_url(configured: str = "") -> str:
    """``configured``, else ``$SWITCHYARD_REDIS_URL``, else :data:`DEFAULT_REDIS_URL`."""
    import os

    return configured or os.environ.get("SWITCHYARD_REDIS_URL") or DEFAULT_REDIS_URL


def open_redis(url: str) -> coredis.Redis[bytes]:
    """A coredis client (use as ``async with``) speaking bytes."""
    return coredis.Redis.from_url(url, decode_responses=False)


@attrs.frozen
class QueueKeys:
    """Redis key names; the defaults are the meeting system's."""

    queues: tuple[str, ...] = QUEUES
    processing: str = "processing_queue"
    dead_letter: str = "dead_letter_queue"
    started: str = "processing_started"
    reaped: str = "processing_reaped"
    done_prefix: str = "done:"
    channel: str = "ai_events"


@attrs.frozen
class QueueConfig:
    """Queue worker settings (the ``[actor.config]`` of a ``inference_redis`` actor)."""

    #: "" = ``$SWITCHYARD_REDIS_URL`` or ``redis://127.0.0.1:6379/0``.
    redis_url: str = ""
    #: Seconds a task may sit in processing_queue before the reaper returns it.
    visibility_timeout: float = 30.0
    #: Retries after the first failure (the meeting system's 3); then the dead-letter queue.
    max_retries: int = 3
    #: Tasks one worker process runs at once.
    concurrency: int = 1
    #: Seconds between polls while every queue is empty.
    idle_poll: float = 0.05
    #: Seconds between reaper runs (0 = a quarter of visibility_timeout, at most 5 s).
    reap_interval: float = 0.0
    #: Seconds ``done:<id>`` markers live (a task id seen again within this is not re-published).
    dedup_ttl: int = 86_400
    #: Decoded input bytes per task; bigger inputs are dead-lettered.
    max_input_bytes: int = 16 << 20
    #: Publish events on this Redis channel.
    channel: str = "ai_events"


_TAKE = """
local now = redis.call('TIME')
local stamp = tostring(now[1] * 1000 + math.floor(now[2] / 1000))
local n = #KEYS
for i = 1, n - 2 do
  local v = redis.call('LMOVE', KEYS[i], KEYS[n - 1], 'RIGHT', 'LEFT')
  if v then
    redis.call('HSET', KEYS[n], v, stamp .. '|' .. ARGV[1] .. '|' .. KEYS[i])
    return {v, KEYS[i]}
  end
end
return false
"""

# KEYS: processing, started, reaped, done, dead_letter; ARGV: raw, event, ttl, channel, dead
_FINISH = """
local removed = redis.call('LREM', KEYS[1], 1, ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('HDEL', KEYS[3], ARGV[1])
local published = 0
if ARGV[2] ~= '' then
  if redis.call('SET', KEYS[4], '1', 'NX', 'EX', tonumber(ARGV[3])) then
    redis.call('PUBLISH', ARGV[4], ARGV[2])
    published = 1
    if ARGV[5] ~= '' then redis.call('LPUSH', KEYS[5], ARGV[5]) end
  end
elseif ARGV[5] ~= '' and removed > 0 then
  redis.call('LPUSH', KEYS[5], ARGV[5])
end
return {removed, published}
"""

# KEYS: processing, started, queue; ARGV: raw, new raw
_RETRY = """
local removed = redis.call('LREM', KEYS[1], 1, ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
if removed > 0 then redis.call('LPUSH', KEYS[3], ARGV[2]) end
return removed
"""

# KEYS: processing, started, reaped, dead_letter; ARGV: timeout ms, max reaps, owner
# (entries of that worker are returned whatever their age; '' = none).
# processing_started values are "<start ms>|<worker id>|<queue>".
_REAP = """
local now = redis.call('TIME')
local ms = now[1] * 1000 + math.floor(now[2] / 1000)
local entries = redis.call('HGETALL', KEYS[2])
local moved = 0
for i = 1, #entries, 2 do
  local raw, v = entries[i], entries[i + 1]
  local sep = string.find(v, '|', 1, true)
  local sep2 = string.find(v, '|', sep + 1, true)
  local started = tonumber(string.sub(v, 1, sep - 1))
  local owner = string.sub(v, sep + 1, sep2 - 1)
  local queue = string.sub(v, sep2 + 1)
  if started and (ms - started >= tonumber(ARGV[1]) or (ARGV[3] ~= '' and owner == ARGV[3])) then
    redis.call('HDEL', KEYS[2], raw)
    if redis.call('LREM', KEYS[1], 1, raw) > 0 then
      local count = redis.call('HINCRBY', KEYS[3], raw, 1)
      if count > tonumber(ARGV[2]) then
        redis.call('HDEL', KEYS[3], raw)
        redis.call('LPUSH', KEYS[4], cjson.encode({task = raw, queue = queue, retry_count = count - 1,
          error = 'worker lost the task ' .. count .. ' times (visibility_timeout)'}))
      else
        redis.call('RPUSH', queue, raw)
      end
      moved = moved + 1
    end
  end
end
return moved
"""


def default_worker_id() -> str:
    """``<host>:<pid>:<random>``: unique per worker, readable in ``processing_started``."""
    import os
    import secrets
    import socket

    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class QueueWorker:
    """Takes, runs and finishes queue tasks until cancelled. Start with ``nursery.start(worker.run)``."""

    def __init__(
        self,
        client: coredis.Redis[bytes],
        runner: Runner,
        known_types: Callable[[], Sequence[str]],
        config: QueueConfig | None = None,
        *,
        keys: QueueKeys | None = None,
        worker_id: str = "",
        logger: logging.Logger | None = None,
    ) -> None:
        self.client = client
        self.runner = runner
        self.known_types = known_types
        self.config = config or QueueConfig()
        self.keys = keys or attrs.evolve(QueueKeys(), channel=self.config.channel)
        self.log = logger or logging.getLogger("switchyard.inference.redis")
        self.bad = RateLimitedLog(self.log, level=logging.INFO, what="bad or failed tasks")
        self.errors = RateLimitedLog(self.log, what="redis errors")
        self._take = client.register_script(_TAKE)
        self._finish = client.register_script(_FINISH)
        self._retry = client.register_script(_RETRY)
        self._reap = client.register_script(_REAP)
        #: Written next to each task it takes, so :meth:`reap_owner` can return them.
        self.worker_id = (worker_id or default_worker_id()).replace("|", "_")
        self.stats = {"taken": 0, "completed": 0, "failed": 0, "retried": 0, "dead": 0, "duplicates": 0, "reaped": 0}

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run ``concurrency`` take loops and the reaper until cancelled."""
        await self.client.ping()
        try:
            async with trio.open_nursery() as nursery:
                for _ in range(max(1, self.config.concurrency)):
                    nursery.start_soon(self._loop)
                nursery.start_soon(self._reaper)
                task_status.started()
        finally:
            # Stopping (cancelled, SIGTERM): hand the tasks this worker holds back now.
            with trio.move_on_after(2) as scope:
                scope.shield = True
                try:  # a fresh client: the running one's connection tasks are cancelled with us
                    async with open_redis(redis_url(self.config.redis_url)) as fresh:
                        await self.reap_once(self.worker_id, script=fresh.register_script(_REAP))
                except Exception as exc:  # Redis gone or the client broken: the reaper will
                    self.errors("returning held tasks at stop: %s: %s", type(exc).__name__, exc)

    async def take(self) -> tuple[bytes, str] | None:
        """Move the next task onto processing_queue: ``(raw, source queue)`` or ``None``."""
        k = self.keys
        got: Any = await self._take(keys=[*k.queues, k.processing, k.started], args=[self.worker_id])
        if not got:
            return None
        raw, queue = got
        return bytes(raw), _text(queue)

    async def reap_once(self, owner: str = "", *, script: Any = None) -> int:
        """Return timed-out tasks (and every task taken by worker ``owner``) to their queues now; how many moved."""
        k = self.keys
        timeout_ms = int(self.config.visibility_timeout * 1000)
        moved: Any = await (script or self._reap)(
            keys=[k.processing, k.started, k.reaped, k.dead_letter], args=[timeout_ms, self.config.max_retries, owner]
        )
        count = int(moved or 0)
        if count:
            self.stats["reaped"] += count
            self.log.warning(
                "reaper returned %d task(s) to their queues (older than %gs, or %s)",
                count,
                self.config.visibility_timeout,
                f"taken by {owner}" if owner else "none of a dead worker",
            )
        return count

    async def reap_owner(self, owner: str) -> int:
        """Return every task taken by worker ``owner`` (known to be dead) to its queue now."""
        return await self.reap_once(owner.replace("|", "_"))

    async def process(self, raw: bytes, queue: str) -> None:
        """Run one taken task and finish, retry or dead-letter it."""
        self.stats["taken"] += 1
        try:
            task = parse_task(raw, max_input_bytes=self.config.max_input_bytes)
            if task.task_type not in self.known_types():
                raise PoisonTask(f"unknown task type {task.task_type!r}", task_id=task.id, task_type=task.task_type)
        except PoisonTask as exc:
            await self._dead(raw, queue, str(exc), exc.task_type, exc.task_id, {}, 0)
            return
        start = time.perf_counter()
        try:
            reply = await self.runner(task)
        except Exception as exc:  # a bug in a runner must not take the worker down
            self.errors("task %s: runner raised %s: %s", task.id, type(exc).__name__, exc)
            reply = TaskReply.failure(
                task.id, f"internal error: {type(exc).__name__}", int((time.perf_counter() - start) * 1000)
            )
        if reply.ok:
            await self._publish(raw, task.id, event_json(task.task_type, reply, task.ids), b"")
            self.stats["completed"] += 1
        elif task.retry_count < self.config.max_retries:
            k = self.keys
            await self._retry(keys=[k.processing, k.started, queue], args=[raw, with_retry(task)])
            self.stats["retried"] += 1
        else:
            await self._dead(raw, queue, reply.error, task.task_type, task.id, task.ids, task.retry_count, reply)

    async def _dead(
        self,
        raw: bytes,
        queue: str,
        error: str,
        task_type: str,
        task_id: str,
        ids: dict[str, Any],
        retries: int,
        reply: TaskReply | None = None,
    ) -> None:
        self.bad("task %s dead-lettered: %s", task_id or "?", error)
        entry = dead_letter_entry(raw, error, queue, retries, _utc_stamp(None))
        event = b""
        if task_type and task_id:
            failed = reply or TaskReply.failure(task_id, error)
            event = event_json(task_type, failed, ids)
        await self._publish(raw, task_id, event, entry)
        self.stats["dead"] += 1
        self.stats["failed"] += 1

    async def _publish(self, raw: bytes, task_id: str, event: bytes, dead: bytes) -> None:
        k = self.keys
        done_key = f"{k.done_prefix}{task_id}"
        outcome: Any = await self._finish(
            keys=[k.processing, k.started, k.reaped, done_key, k.dead_letter],
            args=[raw, event, self.config.dedup_ttl, k.channel, dead],
        )
        if event and not int(outcome[1]):
            self.stats["duplicates"] += 1
            self.log.info("task %s finished again (reaped and rerun); its event was already published", task_id)

    async def _loop(self) -> None:
        backoff = 0.5
        while True:
            try:
                got = await self.take()
                if got is None:
                    await trio.sleep(self.config.idle_poll)
                    continue
                await self.process(*got)
                backoff = 0.5
            except (coredis.exceptions.RedisError, OSError) as exc:
                # Redis went away: the task (if any) stays in processing_queue for the reaper.
                self.errors("redis error: %s; retrying in %.1fs", exc, backoff)
                await trio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)

    async def _reaper(self) -> None:
        interval = self.config.reap_interval or min(5.0, max(0.1, self.config.visibility_timeout / 4))
        while True:
            await trio.sleep(interval)
            try:
                await self.reap_once()
            except (coredis.exceptions.RedisError, OSError) as exc:
                self.errors("reaper: redis error: %s", exc)
