"""Shared fixtures; tests marked `gpu` are skipped where CUDA is not available.

Without CUDA the Triton kernels run under the CPU interpreter (at small sizes). TRITON_INTERPRET
is read when a kernel is decorated, so it is set here, before any test module imports one.
"""

import os
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from llm_worker.config import EngineSettings
from llm_worker.jobs import batch_file_prompt_ids
from llm_worker.models.bundled import bundled_model_dir

# Under pytest-xdist every worker's torch would start a thread a core: two workers on two cores
# then run four busy threads, whose spin-waits slow them all. Each gets its share of the cores.
_XDIST_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _XDIST_WORKERS > 1:
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // _XDIST_WORKERS))

# `python -m pytest` from the checkout puts it first on sys.path, where kernels/ would shadow
# Hugging Face's `kernels`, which transformers imports (worker/__main__.py does the same). Nothing
# above imports either; every test module is imported after this.
_CHECKOUT = Path(__file__).resolve().parents[1]
sys.path[:] = [p for p in sys.path if Path(p or os.curdir).resolve() != _CHECKOUT]

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "prompts.jsonl"


# Tests in these folders use the test brokers (one Redis and one Kafka on fixed ports, which
# some of them restart) or start workers that do: under pytest-xdist (scripts/test.sh) they all
# run on one worker, one at a time, as without it; the rest spread over the workers.
BROKER_TEST_DIRS = ("cli", "queues", "scripts", "service")


@pytest.hookimpl(optionalhook=True)  # pytest-xdist's hook: absent without it
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    from xdist.scheduler import LoadScopeScheduling

    class BrokerTestsTogether(LoadScopeScheduling):  # type: ignore[misc]
        """Every broker test in one unit of work (one worker), every other test its own.
        (Not xdist_group: pytest-xdist 3.8 marks a group in an attribute pytest 9 no longer
        reads.)"""

        def _split_scope(self, nodeid: str) -> str:
            return "brokers" if _test_dir(nodeid) in BROKER_TEST_DIRS else nodeid

    return BrokerTestsTogether(config, log)


def _test_dir(nodeid: str) -> str | None:
    """The folder of tests/ that holds a test ("tests/service/test_x.py::test_y": service)."""
    parts = nodeid.split("::")[0].split("/")
    return parts[1] if len(parts) > 2 and parts[0] == "tests" else None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    return bundled_model_dir(EngineSettings().cache_dir)


@pytest.fixture(scope="session")
def real_prompts(smollm2_dir: Path) -> list[list[int]]:
    """Token ids of the example prompts: chat ones through the chat template, mixed lengths."""
    from transformers import AutoTokenizer

    return batch_file_prompt_ids(AutoTokenizer.from_pretrained(smollm2_dir), EXAMPLES)
