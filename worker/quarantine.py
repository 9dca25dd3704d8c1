"""Jobs whose worker died while they ran (suspects), held apart from fresh jobs.

A suspect never runs beside a fresh job: while any wait, the worker takes nothing new, and once
its engine is empty it runs them: first every suspect that died once, together (a crash usually
kills a whole batch, and this reruns it in one go), then, one at a time, each that died again or
died alone. Only deaths alone count towards poison (worker/admission.py), so a valid job is
never dead-lettered for the job that killed its batch."""

from collections import deque

from llm_worker.admission import Start


class Quarantine:
    def __init__(self, max_group: int) -> None:
        self._max_group = max_group
        self._waiting: deque[Start] = deque()

    def __bool__(self) -> bool:
        return bool(self._waiting)

    def add(self, starts: list[Start]) -> None:
        self._waiting.extend(starts)

    def digests(self) -> dict[str, str]:
        """Job id -> content digest of each waiting suspect: copies of them join them."""
        return {start.parsed.job.id: start.parsed.digest for start in self._waiting}

    def find(self, job_id: str) -> Start | None:
        return next((s for s in self._waiting if s.parsed.job.id == job_id), None)

    def next_group(self) -> list[Start]:
        """The suspects to run next, with the engine empty: one that must run alone, or else
        those that died once, together."""
        alone = next((start for start in self._waiting if start.runs_alone), None)
        if alone is not None:
            self._waiting.remove(alone)
            return [alone]
        return [self._waiting.popleft()
                for _ in range(min(len(self._waiting), self._max_group))]
