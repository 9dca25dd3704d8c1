"""Trimming the jobs stream without dropping un-acked jobs.

Redis 7.0 has no ACKED trimming (8.2), and `XADD MAXLEN ~` deletes entries that are still
pending. So trim by MINID: keep everything from the oldest entry some group still needs, which
is its oldest pending entry, or past its last-delivered id when nothing is pending. Approximate
MINID only ever keeps more, never less.
"""

import redis.asyncio as aioredis


def _stream_id(value: bytes | str) -> tuple[int, int]:
    text = value.decode() if isinstance(value, bytes) else value
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


async def oldest_needed_id(redis: aioredis.Redis, stream: str) -> tuple[int, int] | None:
    """The smallest entry id any consumer group may still read or ack; None: no groups."""
    groups = await redis.xinfo_groups(stream)
    needed: list[tuple[int, int]] = []
    for group in groups:
        name = group["name"]
        summary = await redis.xpending(stream, name)
        if summary["pending"]:
            needed.append(_stream_id(summary["min"]))
        else:
            ms, seq = _stream_id(group["last-delivered-id"])
            needed.append((ms, seq + 1))
    return min(needed) if needed else None


async def trim_acked(redis: aioredis.Redis, stream: str) -> int:
    """Delete entries every group has acked; returns how many went."""
    oldest = await oldest_needed_id(redis, stream)
    if oldest is None:
        return 0
    return int(await redis.xtrim(stream, minid=f"{oldest[0]}-{oldest[1]}", approximate=True))
