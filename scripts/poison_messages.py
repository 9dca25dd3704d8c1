"""A poison corpus for scripts/poison_corpus.py: every kind of bad message the intake must
settle (the four that killed workers, nested and oversized JSON, bad encodings, lax coercion,
schema violations, id conflicts and copies, misrouting), with valid jobs interleaved, and what
each message must end as.

Made for the dummy `tiny-llama` (vocabulary 512, no tokenizer): valid jobs send token ids."""

import json
import random
from collections.abc import Callable
from dataclasses import dataclass

from llm_worker.schemas import ErrorCode

VOCAB = 512
MAX_JOB_BYTES = 512 * 1024  # the workers' max_job_bytes for this corpus


@dataclass(frozen=True)
class Message:
    kind: str
    key: bytes | None
    payload: bytes | None  # None: a Redis entry with no `job` field at all
    expect: str  # "completed", "failed:<code>", "expired", "dead:<code>", "copy" (no new record)
    job_id: str | None = None  # the id it names (its record's, if it publishes one)
    misroute: bool = False  # Kafka: put it on a partition other than its id's


def _job(job_id: str, rng: random.Random, **fields: object) -> dict[str, object]:
    sampling = {"max_tokens": 8, "ignore_eos": True,
                "temperature": rng.choice([0.0, 0.8])}  # sampled ones carry no seed
    tokens = [rng.randrange(5, VOCAB) for _ in range(rng.randrange(4, 24))]
    return {"id": job_id, "prompt_token_ids": tokens, "sampling": sampling, **fields}


def _dump(data: object) -> bytes:
    return json.dumps(data).encode()


def _named(kind: str, job_id: str, payload: bytes, expect: str) -> Message:
    return Message(kind, job_id.encode(), payload, expect, job_id)


def _with_sampling(job: dict[str, object], **sampling: object) -> dict[str, object]:
    return {**job, "sampling": {**job["sampling"], **sampling}}  # type: ignore[dict-item]


_INVALID = f"failed:{ErrorCode.INVALID}"
_MALFORMED = f"failed:{ErrorCode.MALFORMED}"

# kind -> how to build one message of it from (its id, a random source)
_KINDS: dict[str, Callable[[str, random.Random], Message]] = {
    "seed over 2**64": lambda i, r: _named("seed over 2**64", i, _dump(_with_sampling(
        _job(i, r), temperature=0.7, seed=2**64)), _INVALID),
    "top_k over int64": lambda i, r: _named("top_k over int64", i, _dump(_with_sampling(
        _job(i, r), temperature=0.7, top_k=2**63)), _INVALID),
    "stop_token_ids outside the vocabulary": lambda i, r: _named(
        "stop_token_ids outside the vocabulary", i, _dump(_with_sampling(
            _job(i, r), stop_token_ids=[1_000_000], min_tokens=2)), _INVALID),
    "cache_salt lone surrogate": lambda i, r: _named("cache_salt lone surrogate", i, _dump(
        {**_job(i, r), "prompt_token_ids": list(range(5, 40)), "cache_salt": "\ud800"}),
        _INVALID),
    "lone surrogate in metadata": lambda i, r: _named("lone surrogate in metadata", i, _dump(
        {**_job(i, r), "metadata": {"tenant": "a\udfffb"}}), _INVALID),
    "nested JSON": lambda i, r: Message("nested JSON", None, b"[" * 50_000 + b"]" * 50_000,
                                        f"dead:{ErrorCode.MALFORMED}"),
    "nested JSON under an id": lambda i, r: _named("nested JSON under an id", i, _dump(
        {**_job(i, r), "metadata": {}})[:-1] + b', "x": ' + b"[" * 40_000 + b"]" * 40_000
        + b"}", _MALFORMED),
    "random bytes": lambda i, r: Message("random bytes", None, r.randbytes(r.randrange(1, 300)),
                                         f"dead:{ErrorCode.MALFORMED}"),
    "random bytes under an id": lambda i, r: _named(
        "random bytes under an id", i, b"\xff" + r.randbytes(r.randrange(1, 300)), _MALFORMED),
    # Near Kafka's 1 MB message limit: its dead letter must be cut to fit.
    "1 MB not JSON, no id": lambda i, r: Message("1 MB not JSON, no id", None, b"z" * 1_000_000,
                                                 f"dead:{ErrorCode.TOO_LARGE}"),
    "over max_job_bytes": lambda i, r: _named("over max_job_bytes", i, _dump(
        {**_job(i, r), "metadata": {"pad": "x" * (MAX_JOB_BYTES + 1000)}}),
        f"failed:{ErrorCode.TOO_LARGE}"),
    "UTF-16 with a BOM": lambda i, r: _named("UTF-16 with a BOM", i, json.dumps(
        _job(i, r)).encode("utf-16"), _MALFORMED),
    "UTF-8 BOM": lambda i, r: _named("UTF-8 BOM", i, b"\xef\xbb\xbf" + _dump(_job(i, r)),
                                     _MALFORMED),
    "NaN": lambda i, r: _named("NaN", i, _dump(_with_sampling(_job(i, r), temperature=float(
        "nan"))), _MALFORMED),
    "repeated key": lambda i, r: _named("repeated key", i, _dump(_job(i, r))[:-1]
                                        + f', "id": "{i}x"}}'.encode(), _MALFORMED),
    "5000-digit integer": lambda i, r: _named("5000-digit integer", i, _dump(_job(
        i, r, priority=0))[:-2] + b"1" * 5000 + b"}", _MALFORMED),
    "not an object": lambda i, r: _named("not an object", i, _dump([_job(i, r)]), _MALFORMED),
    "max_tokens true": lambda i, r: _named("max_tokens true", i, _dump(_with_sampling(
        _job(i, r), max_tokens=True)), _INVALID),
    "token id 1000.0": lambda i, r: _named("token id 1000.0", i, _dump(
        {**_job(i, r), "prompt_token_ids": [1000.0]}), _INVALID),
    "deadline 12": lambda i, r: _named("deadline 12", i, _dump(_job(i, r, deadline=12)),
                                       _INVALID),
    "temperature as a string": lambda i, r: _named("temperature as a string", i, _dump(
        _with_sampling(_job(i, r), temperature="0.5")), _INVALID),
    "unknown field": lambda i, r: _named("unknown field", i, _dump(_job(i, r, colour="red")),
                                         _INVALID),
    "min_tokens over max_tokens": lambda i, r: _named("min_tokens over max_tokens", i, _dump(
        _with_sampling(_job(i, r), min_tokens=9, max_tokens=2)), _INVALID),
    "token id outside the vocabulary": lambda i, r: _named(
        "token id outside the vocabulary", i, _dump({**_job(i, r), "prompt_token_ids": [
            5, VOCAB + r.randrange(1, 10**6)]}), _INVALID),
    "text prompt, no tokenizer": lambda i, r: _named("text prompt, no tokenizer", i, _dump(
        {"id": i, "prompt": "hello"}), _INVALID),
    "unknown model": lambda i, r: _named("unknown model", i, _dump(_job(
        i, r, model="no-such-model")), f"failed:{ErrorCode.UNKNOWN_MODEL}"),
    "prompt too long": lambda i, r: _named("prompt too long", i, _dump(
        {**_job(i, r), "prompt_token_ids": [7] * 3000}), f"failed:{ErrorCode.PROMPT_TOO_LONG}"),
    "deadline passed": lambda i, r: _named("deadline passed", i, _dump(_job(
        i, r, deadline="2001-01-01T00:00:00Z")), "expired"),
    "key is not the job id": lambda i, r: Message(
        "key is not the job id", b"someone-else", _dump(_job(i, r)),
        f"dead:{ErrorCode.INVALID}"),
    "key not UTF-8": lambda i, r: Message("key not UTF-8", b"\xff\xfe", b"{not json",
                                          f"dead:{ErrorCode.MALFORMED}"),
}


_LARGE = {"1 MB not JSON, no id", "over max_job_bytes"}
_LARGE_COPIES = 4


def build_corpus(num_messages: int, num_valid: int, seed: int, queue: str) -> list[Message]:
    """`num_valid` valid jobs interleaved with the rest; after its valid job, a message may
    reuse its id (other content: a conflict; the same content: a copy)."""
    rng = random.Random(seed)
    valid = [_named("valid job", f"v-{n}", _dump(_job(f"v-{n}", rng)), "completed")
             for n in range(num_valid)]
    kinds = sorted(_KINDS)
    bad: list[Message] = []
    for n in range(num_messages - num_valid):
        slot = n % (len(kinds) + 3)
        if slot < len(kinds):
            kind = kinds[slot]
            if kind in _LARGE and n // (len(kinds) + 3) >= _LARGE_COPIES:
                kind = "random bytes under an id"  # a few megabyte messages make the point
            bad.append(_KINDS[kind](f"p-{n}", rng))
        elif slot == len(kinds):
            bad.append(_reuse(valid[n % num_valid], rng, same_content=False))
        elif slot == len(kinds) + 1:
            bad.append(_reuse(valid[n % num_valid], rng, same_content=True))
        else:
            bad.append(_broker_specific(queue, f"p-{n}", rng))
    return _interleave(valid, bad, rng)


def _reuse(original: Message, rng: random.Random, same_content: bool) -> Message:
    if same_content:
        return Message("copy of a valid job", original.key, original.payload, "copy",
                       original.job_id)
    other = _dump(_job(original.job_id or "", rng))
    return Message("other content under a used id", original.key, other,
                   f"dead:{ErrorCode.DUPLICATE_ID}", original.job_id)


def _broker_specific(queue: str, job_id: str, rng: random.Random) -> Message:
    if queue == "kafka":
        return Message("off its id's partition", None, _dump(_job(job_id, rng)),
                       f"dead:{ErrorCode.MISROUTED}", job_id, misroute=True)
    return Message("no job field", None, None, f"dead:{ErrorCode.MALFORMED}")


def _interleave(valid: list[Message], bad: list[Message], rng: random.Random) -> list[Message]:
    """Random order, except that a message reusing a valid job's id comes after that job."""
    reusing = ("copy of a valid job", "other content under a used id")
    order = valid + [m for m in bad if m.kind not in reusing]
    rng.shuffle(order)
    for message in (m for m in bad if m.kind in reusing):
        after = next(i for i, m in enumerate(order) if m.kind == "valid job"
                     and m.job_id == message.job_id)
        order.insert(rng.randrange(after + 1, len(order) + 1), message)
    return order
