"""Reading the Redis source's runs hash (RedisKeys.runs: jobs-stream entry id -> run record)
when a screening looks its deliveries up.

A value there is anyone's bytes (a buggy or older worker's, a hand edit, a truncated write).
One that decode_run cannot read is skipped with a warning and deleted rather than failing the
screening: the record stays until its entry is acked, so a failed screening would fail again at
every delivery of that entry, and each batch holding it would be handed back, for good.
"""

import logging

import redis.asyncio as aioredis

from llm_worker.queues.protocol import Claim
from llm_worker.queues.runs import RunRecord, UnreadableEntry, decode_run

log = logging.getLogger(__name__)

# Delete each field only while it still holds the bytes read (ARGV: field, value, ...): a record
# written since, by a worker that claimed the entry meanwhile, is readable and must stay.
_DELETE_UNCHANGED = """
local deleted = 0
for i = 1, #ARGV, 2 do
  if redis.call('HGET', KEYS[1], ARGV[i]) == ARGV[i + 1] then
    deleted = deleted + redis.call('HDEL', KEYS[1], ARGV[i])
  end
end
return deleted
"""


def read_run(runs_key: str, claim: Claim, raw: bytes | None) -> RunRecord | None:
    """The run record `raw` (the hash's value for the claim's entry); None for none, and for one
    nobody can read. That one counts as no record: its job has no earlier run on file, so it
    runs again (at least once, never lost) instead of being judged by bytes nobody can read. The
    deaths it may have counted are forgotten, which weakens the quarantine of that one job by
    those deaths only: the record written before its next run is readable and counts the next."""
    if not raw:
        return None
    try:
        return decode_run(raw)
    except UnreadableEntry as exc:
        log.warning("skipping unreadable run record %s field %s (%s): job %s at %s counts as "
                    "never run before and runs again; the record is deleted", runs_key,
                    claim.delivery.handle, exc, claim.job_id, claim.delivery.position)
        return None


async def delete_unchanged(redis: aioredis.Redis, runs_key: str,
                           unreadable: dict[str, bytes]) -> None:
    """Delete the unreadable records read (entry id -> their bytes) so they warn once, not at
    every screening; deleting them says what reading them said: no record."""
    if unreadable:
        args = [part for entry_id, raw in unreadable.items() for part in (entry_id, raw)]
        await redis.eval(_DELETE_UNCHANGED, 1, runs_key, *args)
