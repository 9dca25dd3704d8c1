"""Reading the Redis source's runs hash (RedisKeys.runs: jobs-stream entry id -> run record)
when a screening looks its deliveries up.

A value there is anyone's bytes (a buggy or older worker's, a hand edit, a truncated write).
One that decode_run cannot read is skipped with a warning and deleted rather than failing the
screening: the record stays until its entry is acked, so a failed screening would fail again at
every delivery of that entry, and each batch holding it would be handed back, for good.

What a screening writes back (a death counted, an unreadable record deleted) is written only over
the bytes it read, never over a record written since.
"""

import logging

import redis.asyncio as aioredis

from llm_worker.queues.protocol import Claim
from llm_worker.queues.runs import RunRecord, UnreadableEntry, decode_run

log = logging.getLogger(__name__)

# Write each field only while it still holds the bytes read (ARGV: field, expected, new, ...; an
# empty new deletes): a record written since, by a worker that claimed the entry meanwhile or by
# its previous owner that was slow rather than dead, is newer than what the screening read.
_REPLACE_UNCHANGED = """
local written = 0
for i = 1, #ARGV, 3 do
  if redis.call('HGET', KEYS[1], ARGV[i]) == ARGV[i + 1] then
    if ARGV[i + 2] == '' then
      redis.call('HDEL', KEYS[1], ARGV[i])
    else
      redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 2])
    end
    written = written + 1
  end
end
return written
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


async def replace_unchanged(redis: aioredis.Redis, runs_key: str,
                            updates: dict[str, tuple[bytes, bytes | None]]) -> int:
    """For each entry id: (the record's bytes as read, its replacement or None to delete it),
    applied only where the hash still holds the bytes read. Deleting an unreadable record says
    what reading it said (no record), so it warns once, not at every screening. Returns how many
    were applied."""
    if not updates:
        return 0
    args = [part for entry_id, (read, new) in updates.items()
            for part in (entry_id, read, new or b"")]
    return int(await redis.eval(_REPLACE_UNCHANGED, 1, runs_key, *args))
