"""Why a constraint cannot run. Each is a failed job with `invalid_request`, naming the problem."""

import re

from llm_worker.schemas import ErrorCode

# xgrammar's messages start with a time stamp, its C++ file and line, and sometimes a check.
_NOISE = re.compile(r"^\s*\[[\d:]+\]\s+\S+:\d+:\s*(Check failed: \(.*?\) is false:\s*)?")
_MAX_MESSAGE_CHARS = 500


class StructuredOutputError(Exception):
    """A job's constraint that cannot be compiled or served; `problem` says which kind."""

    code = ErrorCode.INVALID
    problem = "invalid_constraint"

    def __init__(self, message: str) -> None:
        super().__init__(f"{self.problem}: {message}")
        self.message = f"{self.problem}: {message}"


class InvalidSchemaError(StructuredOutputError):
    problem = "invalid JSON schema"


class UnsupportedSchemaFeatureError(StructuredOutputError):
    problem = "unsupported JSON schema feature"


class InvalidRegexError(StructuredOutputError):
    problem = "invalid regex"


class InvalidGrammarError(StructuredOutputError):
    problem = "invalid grammar"


class InvalidChoiceError(StructuredOutputError):
    problem = "invalid choice"


class NoTokenizerError(StructuredOutputError):
    problem = "no tokenizer"


def xgrammar_message(exc: Exception) -> str:
    """What xgrammar said, without its time stamp and source location."""
    lines = [_NOISE.sub("", line).strip() for line in str(exc).splitlines()]
    return " ".join(line for line in lines if line)[:_MAX_MESSAGE_CHARS] or type(exc).__name__
