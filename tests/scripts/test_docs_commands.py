"""The commands the README and docs/ cite exist: every `scripts/...` path is in the repo, and every
`--flag` of a cited script or `llm-worker` command is one it defines (an engine setting, or a
literal in its argparse code). The lab notebook under docs/history/ is kept as written and not
checked."""

import re
from pathlib import Path

import pytest

from llm_worker.config import EngineSettings

REPO_ROOT = Path(__file__).resolve().parents[2]
PAGES = [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").glob("*.md"))]
SCRIPT_PATH = re.compile(r"scripts/[\w./-]*\w")
# Code blocks: fenced, or indented by four spaces (commands in backticks are read too).
FENCE = re.compile(r"^```\w*\n(.*?)^```", re.M | re.S)
ALWAYS = {"--help"}
CLI_SOURCES = ["cli.py", "cli_queue.py", "bench.py", "serve.py"]
ENGINE_FLAGS = {"--" + name.replace("_", "-") for name in EngineSettings.model_fields}


def cited_commands(page: Path) -> list[str]:
    text = page.read_text()
    inline = re.findall(r"`((?:python3? |llm-worker |scripts/\S+\.py )[^`]+)`", text)
    indented = re.findall(r"^ {4}\S.*?((?:python3? |llm-worker ).*)$", text, re.M)
    fenced = [line.strip() for block in FENCE.findall(text) for line in block.splitlines()
              if line.strip().startswith(("python", "llm-worker "))]  # fmt: skip
    return [" ".join(command.split()) for command in inline + indented + fenced]


def flags_of(command: str) -> list[str]:
    tokens = [t.strip("[]") for t in command.split()]
    return [t.split("=")[0] for t in tokens if re.fullmatch(r"--[a-z][\w-]*(=.*)?", t)]


def defined(flag: str, sources: str) -> bool:
    plain = "--" + flag.removeprefix("--no-") if flag.startswith("--no-") else flag
    return (flag in ALWAYS or plain in ENGINE_FLAGS or f'"{flag}"' in sources
            or f'"{plain}"' in sources)  # fmt: skip


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_cited_script_exists(page: Path) -> None:
    cited = set(SCRIPT_PATH.findall(page.read_text()))
    missing = sorted(path for path in cited if not (REPO_ROOT / path).exists())
    assert not missing, f"{page.name} cites {missing}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_flag_of_a_cited_command_is_defined(page: Path) -> None:
    cli = "".join((REPO_ROOT / "worker" / name).read_text() for name in CLI_SOURCES)
    unknown = []
    for command in cited_commands(page):
        # `scripts/dev/ab.py ... -- COMMAND`: the flags after ` -- ` are the inner command's
        for part in command.split(" -- "):
            script = next((t for t in part.split() if t.endswith(".py")), None)
            sources = cli if script is None else (REPO_ROOT / script).read_text()
            unknown += [f"{flag} in `{command}`" for flag in flags_of(part)
                        if not defined(flag, sources)]  # fmt: skip
    assert not unknown, f"{page.name}: " + "; ".join(unknown)


def test_the_benchmarks_page_links_the_history_it_points_at() -> None:
    page = (REPO_ROOT / "docs" / "benchmarks.md").read_text()
    for link in re.findall(r"\]\((history/[^)]+)\)", page):
        assert (REPO_ROOT / "docs" / link).exists(), link
