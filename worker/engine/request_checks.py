"""What add_request refuses before a request exists: what no step could ever serve."""

from llm_worker.engine.scheduler import RequestRejected
from llm_worker.schemas import ErrorCode, SamplingParams


def check_request(
    prompt_token_ids: list[int], params: SamplingParams, vocab_size: int, has_tokenizer: bool
) -> None:
    """RequestRejected for what no step could serve: a token id past the vocabulary (it would
    fault the device, not the request), stop strings with no tokenizer to find them."""
    bad = next((t for t in [*prompt_token_ids, *params.stop_token_ids]
                if not 0 <= t < vocab_size), None)  # fmt: skip
    if bad is not None:
        raise RequestRejected(
            ErrorCode.INVALID, f"token id {bad} outside the vocabulary (0..{vocab_size - 1})"
        )
    if params.stop and not has_tokenizer:
        raise RequestRejected(ErrorCode.INVALID, "stop strings need a model with a tokenizer")
