"""scripts/poison_corpus.py and scripts/kill_trials.py end to end at a small size on the real
test brokers: the plumbing of the must-show runs (corpus, accounting, kills, restarts) in CI;
the full-size figures are the scripts' own runs."""

import importlib
import os
import signal
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from llm_worker.queues.kafka_conn import client_kwargs, ensure_topics
from llm_worker.queues.keys import RedisKeys
from tests.brokers import kafka_bootstrap, redis_url, topic_settings

__all__ = ["kafka_bootstrap", "redis_url"]

REPO_ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]


def _broker_args(queue: str, request: pytest.FixtureRequest) -> list[str]:
    args = ["--queue", queue, "--redis-url", request.getfixturevalue("redis_url")]
    if queue == "kafka":
        args += ["--kafka-bootstrap-servers", request.getfixturevalue("kafka_bootstrap")]
    return args


def _run(script: str, args: list[str], tmp_path: Path) -> str:
    """The script in a session of its own: on a timeout its workers (its children) are killed
    with it, not left serving (and loading the machine) for the rest of the run."""
    process = subprocess.Popen(
        [sys.executable, str(REPO_ROOT / "scripts" / script), *args, "--log-dir", str(tmp_path)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        stdout, stderr = process.communicate(timeout=180)  # about 20 s a run here
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        stdout, stderr = process.communicate()
        pytest.fail(f"{script} ran past 180 s\n{stdout[-3000:]}{stderr[-3000:]}"
                    + _log_tails(tmp_path))
    assert process.returncode == 0, stdout[-3000:] + stderr[-3000:] + _log_tails(tmp_path)
    return stdout


def _log_tails(log_dir: Path) -> str:
    """The last lines of each worker's log: what it was doing when the run failed."""
    tails = []
    for log in sorted(log_dir.rglob("*.log")):
        lines = log.read_text(errors="replace").splitlines()[-15:]
        tails.append(f"\n--- {log.name}\n" + "\n".join(lines))
    return "".join(tails)


@pytest.mark.parametrize("queue", ["redis", "kafka"])
def test_poison_corpus_is_accounted_for_and_not_republished(
        queue: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    out = _run("poison_corpus.py", [*_broker_args(queue, request), "--messages", "120",
                                    "--valid", "12", "--restart-watch-s", "3"], tmp_path)
    assert "| completed | 12 | 12 |" in out
    assert "| job ids with more than one record | 0 | 0 |" in out
    assert "| records published by the restarted worker | 0 |" in out


@pytest.mark.parametrize("queue", ["kafka"])  # Redis: test_service_redis.py kills a worker
def test_a_killed_worker_loses_and_duplicates_nothing(
        queue: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    out = _run("kill_trials.py", [*_broker_args(queue, request), "--trials", "1", "--jobs", "30",
                                  "--kills", "1", "--max-tokens", "32"], tmp_path)
    [total] = [line for line in out.splitlines() if line.startswith("| total |")]
    kills, lost, duplicated, dead = total.split("|")[2:6]
    assert (int(kills), int(lost), int(duplicated), int(dead)) == (1, 0, 0, 0)


@pytest.fixture
def chaos_records(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    monkeypatch.syspath_prepend(str(REPO_ROOT / "scripts"))
    return importlib.import_module("chaos_records")


@pytest.mark.anyio
async def test_redis_unsettled_counts_pending_and_unread_entries(
        chaos_records: ModuleType, redis_url: str, unique_name: str) -> None:
    keys = RedisKeys(unique_name)
    client = aioredis.Redis.from_url(redis_url)
    try:
        entry_ids = [await client.xadd(keys.jobs_stream, {"id": f"j{i}"}) for i in range(3)]
        await client.xgroup_create(keys.jobs_stream, keys.group, id="0")
        await client.xreadgroup(keys.group, "w", {keys.jobs_stream: ">"}, count=2)
        # two read and pending, one never read
        assert await chaos_records.redis_unsettled(redis_url, unique_name) == 3
        await client.xack(keys.jobs_stream, keys.group, entry_ids[0])
        assert await chaos_records.redis_unsettled(redis_url, unique_name) == 2
    finally:
        await client.aclose()


@pytest.mark.anyio
async def test_kafka_unsettled_counts_messages_past_the_committed_offsets(
        chaos_records: ModuleType, kafka_bootstrap: str, unique_name: str) -> None:
    settings = topic_settings(kafka_bootstrap, unique_name, 2)
    await ensure_topics(settings)
    producer = AIOKafkaProducer(**client_kwargs(settings))
    await producer.start()
    try:
        for partition, count in ((0, 3), (1, 1)):
            for _ in range(count):
                await producer.send_and_wait(settings.jobs_topic, b"{}", partition=partition)
    finally:
        await producer.stop()
    assert await chaos_records.kafka_unsettled(settings) == 4  # the group never committed
    consumer = AIOKafkaConsumer(**client_kwargs(settings), group_id=settings.group_id,
                                enable_auto_commit=False)
    await consumer.start()
    try:
        first = TopicPartition(settings.jobs_topic, 0)
        consumer.assign([first])
        await consumer.commit({first: 2})
    finally:
        await consumer.stop()
    assert await chaos_records.kafka_unsettled(settings) == 2  # one on each partition
