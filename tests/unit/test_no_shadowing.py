"""Our source folders never shadow another distribution's module of the same name.

kernels/ is also the import name of Hugging Face's `kernels`, which transformers imports from
integrations/hub_kernels.py. The folders install and import as `llm_worker`, pytest runs in
importlib mode, and `python -m worker` drops the checkout from sys.path first. Checked here from
the repo root as the current directory, with HF `kernels` installed (the dev extra), in this
process and in the ways a user starts Python: `python -m worker`, `python -m llm_worker`, the
`llm-worker` console script.
"""

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _in(path: str | None, folder: Path) -> bool:
    return path is not None and Path(path).resolve().is_relative_to(folder.resolve())


def test_hf_kernels_and_transformers_llama_beside_ours(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)
    from transformers.utils.import_utils import is_kernels_available

    import kernels

    site_packages = Path(sysconfig.get_paths()["purelib"])
    assert _in(kernels.__file__, site_packages) and not _in(kernels.__file__, REPO / "kernels")
    # transformers imports only the `kernels` versions it supports; with another the import
    # below would never touch it and this test would prove nothing.
    assert is_kernels_available(), "pin HF kernels to a version transformers imports"

    import transformers.integrations.hub_kernels as hub_kernels
    import transformers.models.llama.modeling_llama as modeling_llama

    assert sys.modules["kernels"] is kernels and hub_kernels.__name__ and modeling_llama.__name__
    assert hasattr(kernels, "CUDAProperties"), "the names hub_kernels imports from HF kernels"

    import llm_worker.engine.llm_engine as llm_engine
    import llm_worker.kernels.paged_attention as paged_attention

    assert _in(paged_attention.__file__, REPO / "kernels")
    assert _in(llm_engine.__file__, REPO / "worker")


def _run(args: list[str], cwd: Path, timeout_s: float = 300) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run(
        args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout_s, check=False
    )


@pytest.mark.parametrize("package", ["worker", "llm_worker"])
def test_python_m_help_from_the_repo_root(package: str) -> None:
    done = _run([sys.executable, "-m", package, "--help"], cwd=REPO)
    assert done.returncode == 0, done.stderr
    assert "run-batch" in done.stdout and "enqueue" in done.stdout


def test_console_script_from_elsewhere(tmp_path: Path) -> None:
    script = Path(sys.executable).parent / "llm-worker"
    done = _run([str(script), "enqueue", "--help"], cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "--redis-url" in done.stdout


def test_generate_without_a_tokenizer_says_so_in_one_line() -> None:
    """`python -m worker generate` from the repo root builds the engine (torch, transformers'
    config classes, our kernels); a random-weight shape has no tokenizer for text prompts."""
    done = _run(
        [
            *(sys.executable, "-m", "worker", "--log-level", "WARNING", "generate", "Hello"),
            *("--max-tokens", "4", "--model", "tiny-llama", "--load-format", "dummy"),
        ],
        cwd=REPO,
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines() == [
        "llm-worker generate: error: --model tiny-llama has no tokenizer to encode text prompts "
        "(random weights for a named shape); use the bundled model or an HF folder"
    ]


@pytest.mark.slow
def test_generate_on_the_bundled_model_from_the_repo_root(smollm2_dir: Path) -> None:
    """The issue's own command. -X importtime lists every module the process imported: HF
    `kernels` and transformers' hub_kernels among them proves the path that broke was taken."""
    done = _run(
        [sys.executable, "-X", "importtime", "-m", "worker", "--log-level", "WARNING",
         "generate", "Hello", "--max-tokens", "4"],
        cwd=REPO,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip(), "generated text"
    imported = {line.rpartition("|")[2].strip() for line in done.stderr.splitlines()}
    assert {"kernels", "transformers.integrations.hub_kernels"} <= imported
    assert "llm_worker.kernels.paged_attention" in imported or "llm_worker.kernels" in imported
