"""Job lifecycle states as clients read them."""

from enum import StrEnum


class JobStatus(StrEnum):
    QUEUED = "queued"  # accepted by a producer, not yet picked by a worker
    RUNNING = "running"  # a worker holds it and the engine has admitted it
    COMPLETED = "completed"  # finished normally (stop, length or eos); text is final
    FAILED = "failed"  # refused or errored; error.code and error.message say why
    EXPIRED = "expired"  # its deadline passed before it could finish
    CANCELLED = "cancelled"  # a client asked to abort it

    @property
    def is_terminal(self) -> bool:
        return self not in (JobStatus.QUEUED, JobStatus.RUNNING)
