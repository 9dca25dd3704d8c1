"""`--help` says what each command uses and nothing it does not."""

import argparse
from collections.abc import Iterator

from llm_worker.cli import build_parser


def _parsers(parser: argparse.ArgumentParser, name: str = "llm-worker") -> Iterator[
    tuple[str, argparse.ArgumentParser]
]:
    yield name, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub_name, sub in action.choices.items():
                yield from _parsers(sub, f"{name} {sub_name}")


def _options(parser: argparse.ArgumentParser) -> set[str]:
    return {
        flag
        for action in parser._actions
        for flag in action.option_strings
        if flag.startswith("--") and flag != "--help"
    }


def test_no_help_text_shows_a_none_default() -> None:
    helps = dict(_parsers(build_parser()))
    assert {"llm-worker run-batch", "llm-worker enqueue", "llm-worker bench throughput"} <= set(
        helps
    )
    for name, parser in helps.items():
        text = parser.format_help()
        assert "None" not in text, f"{name} --help:\n{text}"


def test_enqueue_and_result_list_only_what_they_use() -> None:
    helps = dict(_parsers(build_parser()))
    assert _options(helps["llm-worker enqueue"]) == {
        "--queue", "--redis-url", "--kafka-bootstrap-servers",
        "--prompt", "--id", "--max-tokens", "--temperature", "--file", "--wait", "--timeout-s",
    }
    assert _options(helps["llm-worker result"]) == {"--redis-url", "--wait", "--timeout-s"}
    serve = _options(helps["llm-worker serve"])
    assert {"--queue", "--worker-id", "--max-in-flight", "--shutdown-grace-s"} <= serve
    assert "--model" in serve and "--prompt" not in serve
