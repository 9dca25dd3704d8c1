"""The Python half of scripts/dev/device_validate.sh, run by the Python that sees only the device
image's distributions, in the environment scripts/dev/device_setup.sh exported: every module
comes from the carried bundle, the checkout (through the llm_worker link tree), the device's
packages or the standard library; the broker clients round-trip a message; the CLI starts.
Env: REPO (the checkout), SITE (the bundle's install), REDIS_URL, KAFKA_BOOTSTRAP (or empty).
"""

import asyncio
import os
import subprocess
import sys
import sysconfig

sys.path.insert(0, os.path.join(os.environ["REPO"], "scripts"))  # bench_scale.py's helpers

import scale_checks  # noqa: F401
import scale_fleet  # noqa: F401
import scale_runs  # noqa: F401
import xgrammar
from redis.asyncio import Redis

import llm_worker.cli
import llm_worker.queues.kafka
import llm_worker.service
from llm_worker.telemetry import build_telemetry

SITE = os.path.realpath(os.environ["SITE"])
REPO = os.path.realpath(os.environ["REPO"])
STDLIB = tuple(os.path.realpath(sysconfig.get_paths()[key]) for key in ("stdlib", "platstdlib"))
FROM_BUNDLE = ("redis", "aiokafka", "pydantic", "pydantic_core", "pydantic_settings",
               "opentelemetry.sdk.metrics", "xgrammar", "tvm_ffi", "gguf")  # fmt: skip


def origin(path: str) -> str | None:
    path = os.path.realpath(path)
    if path.startswith(SITE + os.sep):
        return "bundle"
    if path.startswith(REPO + os.sep):
        return "checkout"
    if path.startswith(STDLIB) and "-packages" not in path:
        return "stdlib"
    return "device packages" if "-packages" in path else None


def check_origins() -> None:
    counts: dict[str, int] = {}
    for module in list(sys.modules.values()):
        where = origin(getattr(module, "__file__", None) or "/")
        if where:
            counts[where] = counts.get(where, 0) + 1
    print("device_checks: modules loaded from", counts, file=sys.stderr)
    import gguf  # noqa: F401  (transformers imports it only for a GGUF file)

    for name in FROM_BUNDLE:
        assert origin(sys.modules[name].__file__ or "/") == "bundle", name
    assert origin(llm_worker.service.__file__ or "/") == "checkout"


async def round_trips() -> None:
    client = Redis.from_url(os.environ["REDIS_URL"])
    entry = await client.xadd("device-validate", {"k": "v"})
    entries = await client.xrange("device-validate")
    assert entries and entries[0][0] == entry
    await client.aclose()
    if not os.environ["KAFKA_BOOTSTRAP"]:
        return
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=os.environ["KAFKA_BOOTSTRAP"])
    await producer.start()
    await producer.send_and_wait("device-validate", b"hello")
    await producer.stop()
    consumer = AIOKafkaConsumer("device-validate", auto_offset_reset="earliest",
                                bootstrap_servers=os.environ["KAFKA_BOOTSTRAP"])  # fmt: skip
    await consumer.start()
    record = await asyncio.wait_for(consumer.getone(), 30)
    await consumer.stop()
    assert record.value == b"hello"


def main() -> None:
    check_origins()
    build_telemetry("validate", "none", "redis").shutdown()
    assert "root ::=" in str(xgrammar.Grammar.from_json_schema('{"type": "integer"}'))
    asyncio.run(round_trips())
    subprocess.run([sys.executable, "-m", "llm_worker", "serve", "--help"], check=True,
                   stdout=subprocess.DEVNULL)  # fmt: skip
    print("device_checks: imports, telemetry, an xgrammar grammar, Redis XADD/XRANGE"
          + (", Kafka produce/consume" if os.environ["KAFKA_BOOTSTRAP"] else "")
          + " and `python -m llm_worker serve --help` passed", file=sys.stderr)  # fmt: skip


if __name__ == "__main__":
    main()
