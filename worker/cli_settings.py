"""Engine settings from a command's flags, env and .env; what is invalid is one CLI line."""

import argparse

from pydantic import ValidationError

from llm_worker.cli_errors import CliError
from llm_worker.config import EngineSettings, settings_from_args


def engine_settings(args: argparse.Namespace) -> EngineSettings:
    from llm_worker.openai_batch import describe_validation

    try:
        return settings_from_args(EngineSettings, args)
    except ValidationError as exc:
        raise CliError(f"invalid engine settings: {describe_validation(exc)}") from exc
