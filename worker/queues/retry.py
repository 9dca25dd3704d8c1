"""Retrying broker calls through restarts and outages, with capped exponential backoff."""

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from llm_worker.queues.factory import is_transient

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass
class Backoff:
    first_s: float = 0.05
    max_s: float = 5.0
    current_s: float = 0.0

    async def wait(self) -> None:
        self.current_s = min(self.max_s, max(self.first_s, self.current_s * 2))
        await asyncio.sleep(self.current_s)

    def reset(self) -> None:
        self.current_s = 0.0


async def retrying(action: Callable[[], Awaitable[T]], what: str) -> T:
    """Run `action` until it succeeds and return its value; transient broker errors are
    retried with backoff, any other error is raised at once. `action` must be idempotent."""
    backoff = Backoff()
    while True:
        try:
            return await action()
        except Exception as exc:
            if not is_transient(exc):
                raise
            log.warning("broker call for %s failed, retrying: %r", what, exc)
            await backoff.wait()
