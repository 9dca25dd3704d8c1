"""Every Redis key and stream name the worker and its clients use, in one place.

A deployment picks a `prefix` so several worker pools can share one Redis without colliding.
"""

from dataclasses import dataclass


@dataclass(frozen=True)
class RedisKeys:
    prefix: str = "llmw"

    @property
    def jobs_stream(self) -> str:
        """Producers XADD jobs here (fields `id` and `job`); workers read it as one group."""
        return f"{self.prefix}:jobs"

    @property
    def group(self) -> str:
        """Consumer-group name on the jobs stream (a name, not a key)."""
        return f"{self.prefix}:workers"

    @property
    def dead_letter_stream(self) -> str:
        """Messages no worker could turn into a result: payload, reason, delivery count."""
        return f"{self.prefix}:dead"

    @property
    def results_stream(self) -> str:
        """One entry per published terminal result (`id`, `status`): a feed for consumers who
        would rather follow than poll, and the audit trail that shows a job finished once."""
        return f"{self.prefix}:results"

    @property
    def runs(self) -> str:
        """Hash: jobs-stream entry id -> its run record (worker/queues/runs.py), from just before
        a worker hands the job to its engine until the entry is acked."""
        return f"{self.prefix}:runs"

    def claim(self, job_id: str) -> str:
        """The content digest the id is bound to (schemas/digest.py), with the results' TTL:
        set by the first message (or producer) that claims the id."""
        return f"{self.prefix}:claim:{job_id}"

    def result(self, job_id: str) -> str:
        """The terminal Result as JSON, with a TTL."""
        return f"{self.prefix}:result:{job_id}"

    def status(self, job_id: str) -> str:
        """A JobStatus value, with a TTL; pollers read it before the result exists."""
        return f"{self.prefix}:status:{job_id}"

    def cancel(self, job_id: str) -> str:
        """Set by a client (any value, with a TTL) to cancel the job; workers poll it."""
        return f"{self.prefix}:cancel:{job_id}"
