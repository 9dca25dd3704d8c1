"""Worker processes (`python -m llm_worker.serve`) for crash and start-up tests, and in-process
services for the rest."""

import asyncio
import os
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

from llm_worker.service import Service
from tests.service.jobs import TEST_ENGINE_SETTINGS

REPO_ROOT = Path(__file__).resolve().parents[2]


def spawn_worker(env: dict[str, str], log_path: Path) -> subprocess.Popen:
    """A worker process configured by env (LLM_WORKER_*), logging to `log_path`."""
    full_env = {
        **os.environ,
        "LLM_WORKER_MAX_NUM_SEQS": str(TEST_ENGINE_SETTINGS.max_num_seqs),
        "LLM_WORKER_KV_CACHE_MEMORY_GB": str(TEST_ENGINE_SETTINGS.kv_cache_memory_gb),
        # Two workers on two cores: a thread each, or their matmuls fight over both.
        "OMP_NUM_THREADS": "1",
        **env,
    }
    with open(log_path, "ab") as log:
        # Not from the checkout: `-m` puts the working directory first on sys.path, where
        # kernels/ would shadow Hugging Face's `kernels` (the package is installed, editable).
        return subprocess.Popen([sys.executable, "-m", "llm_worker.serve"], cwd=log_path.parent,
                                env=full_env, stdout=log, stderr=subprocess.STDOUT)


async def wait_for(condition: Callable[[], Awaitable[bool]], timeout_s: float,
                   what: str, interval_s: float = 0.1) -> None:
    async with asyncio.timeout(timeout_s):
        while not await condition():
            await asyncio.sleep(interval_s)
    assert await condition(), what


async def run_service_until(service: Service, done: Callable[[], Awaitable[bool]],
                            timeout_s: float) -> None:
    """Run `service` in this process until `done()`, then stop it gracefully."""
    runner = asyncio.create_task(service.run())
    try:
        async with asyncio.timeout(timeout_s):
            while not await done():
                if runner.done():
                    runner.result()  # surface a crash instead of waiting out the timeout
                await asyncio.sleep(0.1)
    finally:
        service.stop()
        await runner
