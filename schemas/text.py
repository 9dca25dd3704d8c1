"""Strings and numbers as the wire may carry them, bounded where the engine needs a bound.

Every string on the wire must be text a tokenizer, a hash and a UTF-8 broker can take: JSON's
`\\ud800` escape decodes to a lone surrogate, which Python strings hold but UTF-8 cannot encode.
"""

from datetime import datetime
from typing import Annotated, Literal

from pydantic import AfterValidator, BeforeValidator, Field

INT32_MAX = 2**31 - 1  # token ids, counts and top-k: what an int32 tensor holds
SEED_MAX = 2**64 - 1  # torch.Generator.manual_seed takes an unsigned 64-bit seed


def _encodable(text: str) -> str:
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise ValueError(
                f"not valid Unicode text: a lone surrogate at character {exc.start}"
            ) from None
    return text


def _iso_datetime(value: object) -> object:
    """An ISO 8601 string (or a datetime from Python code); never a number read as epoch."""
    if isinstance(value, datetime):
        return value
    if not isinstance(value, str):
        raise ValueError(f"must be an ISO 8601 timestamp string, got {type(value).__name__}")
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"{value[:40]!r} is not an ISO 8601 timestamp") from None


def _not_bool(value: object) -> object:
    if isinstance(value, bool):
        raise ValueError("must be a number, not a boolean")
    return value


Text = Annotated[str, AfterValidator(_encodable)]
IsoDatetime = Annotated[datetime, BeforeValidator(_iso_datetime)]
SchemaVersion = Annotated[Literal[1], BeforeValidator(_not_bool)]
TokenId = Annotated[int, Field(ge=0, le=INT32_MAX)]
