"""Dead letters small enough for any broker: a payload over the bound is cut, and the letter
says how large the original was and its digest, so the message can still be identified."""

import hashlib
from dataclasses import dataclass

# Well under Kafka's default 1 MB message size and Redis's 512 MB, with room for the reason.
DEFAULT_MAX_PAYLOAD_BYTES = 64 * 1024


@dataclass(frozen=True)
class DeadLetterPayload:
    payload: bytes  # the original, or its first `max_bytes` bytes
    original_size: int
    sha256: str  # of the original payload
    truncated: bool

    @classmethod
    def of(cls, payload: bytes, max_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES) -> "DeadLetterPayload":
        return cls(payload[:max_bytes], len(payload), hashlib.sha256(payload).hexdigest(),
                   len(payload) > max_bytes)

    def fields(self) -> dict[str, str]:
        """Metadata fields (Redis stream fields, Kafka headers) beside the payload."""
        return {"original_size": str(self.original_size), "sha256": self.sha256,
                "truncated": "true" if self.truncated else "false"}
