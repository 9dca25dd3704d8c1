"""The engine's plain configuration: frozen dataclasses, no torch, no settings layer.

`worker/config.py` builds them from the user's settings once; the scheduler takes them as they
are.
"""

from dataclasses import dataclass


class EngineConfigError(ValueError):
    """The settings or the model cannot give a working engine; the message names what to change.
    Torch-free, so that the CLI can catch it without importing the engine."""


@dataclass(frozen=True)
class SchedulerConfig:
    max_num_seqs: int
    max_num_batched_tokens: int
    max_model_len: int
    enable_chunked_prefill: bool
