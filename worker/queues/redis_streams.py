"""Jobs from a Redis stream through one consumer group.

Order of intake in `receive`: this consumer's own pending entries (once, after a restart), then
entries other consumers left idle past `claim_idle_ms` (XAUTOCLAIM), then new entries
(XREADGROUP COUNT <free slots>). In-flight entries are renewed with `XCLAIM ... JUSTID`, which
resets their idle time without counting a delivery, so a long job is not stolen.
"""

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from llm_worker.queues.dead_letters import DeadLetterPayload
from llm_worker.queues.keys import RedisKeys
from llm_worker.queues.protocol import (
    Attempts,
    Claim,
    Delivery,
    Run,
    Screened,
)
from llm_worker.queues.publish_then_ack import PublishThenAckSource
from llm_worker.queues.redis_conn import TRANSIENT_ERRORS, make_client, verify
from llm_worker.queues.redis_runs import read_run, replace_unchanged
from llm_worker.queues.redis_trim import trim_acked
from llm_worker.queues.runs import RunRecord
from llm_worker.service_settings import RedisSettings

# Renew only entries this consumer still owns: a plain XCLAIM would steal back an entry that
# another worker rightly claimed while we were stalled.
_RENEW_OWN = """
local lost = {}
for i = 3, #ARGV do
  local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1)
  if p[1] and p[1][2] == ARGV[2] then
    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[i], 'JUSTID')
  else
    table.insert(lost, ARGV[i])
  end
end
return lost
"""


@dataclass(frozen=True)
class RedisSourceConfig:
    consumer: str  # stable per worker so a restart replays its own pending entries
    claim_idle_ms: int
    trim_interval_s: float
    id_binding_ttl_s: int = 7 * 24 * 3600  # as long as the results it protects
    dead_letter_maxlen: int = 100_000


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class RedisStreamSource(PublishThenAckSource):
    def __init__(self, settings: RedisSettings, config: RedisSourceConfig) -> None:
        self._settings = settings
        self._config = config
        self._keys = RedisKeys(settings.prefix)
        self._redis: aioredis.Redis = make_client(settings)
        self._in_flight: set[str] = set()
        self._runs: dict[str, RunRecord] = {}  # entry id -> the run this worker recorded
        self.num_unreadable_run_records = 0  # skipped (and deleted) by screenings that finished
        self._replay_cursor: str | None = "-"  # None once our own pending list is drained
        self._claim_cursor = "0-0"
        self._next_claim_s = 0.0
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        await verify(self._redis, self._settings)
        await self._ensure_group()
        self._tasks = [
            asyncio.create_task(self._every(self._config.claim_idle_ms / 3000, self._renew)),
            asyncio.create_task(self._every(self._config.trim_interval_s, self._trim)),
        ]

    async def _ensure_group(self) -> None:
        try:
            await self._redis.xgroup_create(
                self._keys.jobs_stream, self._keys.group, id="0", mkstream=True
            )
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def receive(self, max_jobs: int, timeout_s: float) -> list[Delivery]:
        if max_jobs <= 0:
            await asyncio.sleep(timeout_s)  # leases are renewed by their own task meanwhile
            return []
        try:
            deliveries = await self._replay_own(max_jobs)
            if not deliveries and time.monotonic() >= self._next_claim_s:
                deliveries = await self._claim_idle(max_jobs)
            if not deliveries:
                deliveries = await self._read_new(max_jobs, timeout_s)
        except ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            # The server restarted without its data, or someone deleted the stream.
            await self._ensure_group()
            return []
        self._in_flight.update(str(d.handle) for d in deliveries)
        return deliveries

    async def _replay_own(self, max_jobs: int) -> list[Delivery]:
        if self._replay_cursor is None:
            return []
        pending = await self._redis.xpending_range(
            self._keys.jobs_stream, self._keys.group, min=self._replay_cursor, max="+",
            count=max_jobs, consumername=self._config.consumer,
        )
        pending = [p for p in pending if _text(p["message_id"]) not in self._in_flight]
        if not pending:
            self._replay_cursor = None
            return []
        self._replay_cursor = "(" + _text(pending[-1]["message_id"])
        counts = {_text(p["message_id"]): int(p["times_delivered"]) + 1 for p in pending}
        # XCLAIM (not JUSTID) returns the entries and counts this as another delivery.
        entries = await self._redis.xclaim(
            self._keys.jobs_stream, self._keys.group, self._config.consumer, 0, list(counts)
        )
        return await self._to_deliveries(entries, counts)

    async def _claim_idle(self, max_jobs: int) -> list[Delivery]:
        next_id, entries, deleted_ids = await self._redis.xautoclaim(
            self._keys.jobs_stream, self._keys.group, self._config.consumer,
            min_idle_time=self._config.claim_idle_ms, start_id=self._claim_cursor, count=max_jobs,
        )
        if deleted_ids:  # trimmed away while pending: nothing left to run, clear the PEL
            await self._ack_ids([_text(i) for i in deleted_ids])
        self._claim_cursor = _text(next_id)
        if self._claim_cursor == "0-0":  # full pass done; look again after a while
            self._next_claim_s = time.monotonic() + self._config.claim_idle_ms / 2000
        counts = await self._delivery_counts([_text(e[0]) for e in entries if e])
        return await self._to_deliveries(entries, counts)

    async def _read_new(self, max_jobs: int, timeout_s: float) -> list[Delivery]:
        reply: Any = await self._redis.xreadgroup(
            self._keys.group, self._config.consumer, {self._keys.jobs_stream: ">"},
            count=max_jobs, block=self._block_ms(timeout_s),
        )
        entries = reply[0][1] if reply else []
        return await self._to_deliveries(entries, {})

    def _block_ms(self, timeout_s: float) -> int:
        # The server-side block must end well before the client's socket timeout, or an idle
        # stream would look like a dead connection.
        ceiling_s = self._settings.socket_timeout_s / 2
        return max(1, int(min(timeout_s, ceiling_s) * 1000))

    async def _delivery_counts(self, entry_ids: list[str]) -> dict[str, int]:
        async with self._redis.pipeline(transaction=False) as pipe:
            for entry_id in entry_ids:
                pipe.xpending_range(
                    self._keys.jobs_stream, self._keys.group, min=entry_id, max=entry_id, count=1
                )
            replies = await pipe.execute()
        return {
            entry_id: int(reply[0]["times_delivered"]) if reply else 1
            for entry_id, reply in zip(entry_ids, replies, strict=True)
        }

    async def _to_deliveries(self, entries: list, counts: dict[str, int]) -> list[Delivery]:
        deliveries = []
        for entry in entries:
            if not entry or entry[1] is None:  # deleted between pending and claim
                continue
            entry_id, fields = _text(entry[0]), entry[1]
            payload = fields.get(b"job")
            key = fields.get(b"id")
            deliveries.append(Delivery(
                payload=payload or b"",
                key=key.decode(errors="replace") if key else None,
                delivery_count=counts.get(entry_id, 1),
                handle=entry_id,
                position=f"{self._keys.jobs_stream}/{entry_id}",
                error=None if payload is not None else "stream entry has no `job` field",
            ))
        return deliveries

    async def screen(self, claims: Sequence[Claim]) -> list[Screened]:
        async with self._redis.pipeline(transaction=False) as pipe:
            for claim in claims:
                if claim.job_id is not None:  # SET NX GET: the old digest, or bind this one
                    pipe.set(self._keys.claim(claim.job_id), claim.digest, nx=True, get=True,
                             ex=self._config.id_binding_ttl_s)
                pipe.hget(self._keys.runs, str(claim.delivery.handle))
            replies = iter(await pipe.execute())
        screened = []
        updates: dict[str, tuple[bytes, bytes | None]] = {}  # entry id -> (read, new or None)
        for claim in claims:
            raw_bound = next(replies) if claim.job_id is not None else None
            bound = _text(raw_bound) if raw_bound is not None else None
            raw_run = next(replies)
            run = read_run(self._keys.runs, claim, raw_run)
            if run is None and raw_run:
                updates[str(claim.delivery.handle)] = (raw_run, None)
            if run is not None and run.running:  # its runner died: count the death, once
                updates[str(claim.delivery.handle)] = (raw_run, run.counted().to_json())
            attempts = run.attempts() if run is not None else Attempts()
            screened.append(Screened(attempts, None if bound in (None, claim.digest) else bound))
        await replace_unchanged(self._redis, self._keys.runs, updates)
        self.num_unreadable_run_records += sum(new is None for _, new in updates.values())
        return screened

    async def started(self, runs: Sequence[Run]) -> None:
        records = {str(run.delivery.handle): RunRecord.of(run) for run in runs}
        await self._write_runs(records)

    async def hand_back(self, deliveries: Sequence[Delivery]) -> None:
        await self._write_runs({entry_id: run.handed_back()
                                for entry_id, run in self._own_runs(deliveries).items()})

    async def note_crash(self, deliveries: Sequence[Delivery], error: str) -> None:
        await self._write_runs({entry_id: run.crashed(error)
                                for entry_id, run in self._own_runs(deliveries).items()})

    def _own_runs(self, deliveries: Sequence[Delivery]) -> dict[str, RunRecord]:
        entry_ids = (str(d.handle) for d in deliveries)
        return {i: self._runs[i] for i in entry_ids if i in self._runs}

    async def _write_runs(self, records: dict[str, RunRecord]) -> None:
        if records:
            await self._redis.hset(self._keys.runs, mapping={
                entry_id: run.to_json() for entry_id, run in records.items()})
            self._runs.update(records)

    async def release(self, deliveries: Sequence[Delivery]) -> None:
        # No longer renewed, their leases lapse and XAUTOCLAIM hands them out again.
        self._in_flight.difference_update(str(d.handle) for d in deliveries)

    async def ack(self, delivery: Delivery) -> None:
        await self.ack_many([delivery])

    async def ack_many(self, deliveries: Sequence[Delivery]) -> None:
        if deliveries:
            await self._ack_ids([str(d.handle) for d in deliveries])

    async def _ack_ids(self, entry_ids: list[str]) -> None:
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.xack(self._keys.jobs_stream, self._keys.group, *entry_ids)
            pipe.hdel(self._keys.runs, *entry_ids)
            await pipe.execute()
        self._forget(entry_ids)

    def _forget(self, entry_ids: list[str]) -> None:
        self._in_flight.difference_update(entry_ids)
        for entry_id in entry_ids:
            self._runs.pop(entry_id, None)

    async def dead_letter(self, delivery: Delivery, reason: str) -> None:
        """Dead letter and ack in one MULTI, so a death in between cannot write it twice."""
        entry_id = str(delivery.handle)
        bounded = DeadLetterPayload.of(delivery.payload)
        letter = {
            "entry_id": entry_id, "job_id": (delivery.key or "")[:256], "reason": reason,
            "payload": bounded.payload, "delivery_count": delivery.delivery_count,
            "worker": self._config.consumer, **bounded.fields(),
        }
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.xadd(self._keys.dead_letter_stream, letter,  # type: ignore[arg-type]
                      maxlen=self._config.dead_letter_maxlen, approximate=True)
            pipe.xack(self._keys.jobs_stream, self._keys.group, entry_id)
            pipe.hdel(self._keys.runs, entry_id)
            await pipe.execute()
        self._forget([entry_id])

    async def lag(self) -> int | None:
        # XINFO GROUPS reports `lag` from Redis 7.0 on; it is nil when the stream was trimmed or
        # edited in ways that make the count unknowable.
        for group in await self._redis.xinfo_groups(self._keys.jobs_stream):
            if _text(group.get("name")) == self._keys.group:
                lag = group.get("lag")
                return int(lag) if lag is not None else None
        return None

    async def _renew(self) -> None:
        if self._in_flight:
            await self._redis.eval(
                _RENEW_OWN, 1, self._keys.jobs_stream,
                self._keys.group, self._config.consumer, *sorted(self._in_flight),
            )

    async def _trim(self) -> None:
        await trim_acked(self._redis, self._keys.jobs_stream)

    async def _every(self, interval_s: float, action: Callable[[], Awaitable[None]]) -> None:
        while True:
            await asyncio.sleep(interval_s)
            with contextlib.suppress(*TRANSIENT_ERRORS, ResponseError):
                await action()

    async def close(self) -> None:
        """Un-acked entries stay in our pending list: a restart replays them, and other
        workers claim them once they are idle past claim_idle_ms."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._redis.aclose()
