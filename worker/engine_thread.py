"""The synchronous engine on a thread of its own, driven by messages.

The engine is not thread-safe, so only this thread touches it; the event loop sends commands
through a thread-safe queue and gets events back through `loop.call_soon_threadsafe`. While
the engine has work, commands are drained between steps, so an abort lands within one step.
A request the engine refuses or fails is one `Failed` event; only an exception out of the
engine itself (a device fault) ends the thread, as one `Crashed` event.
"""

import asyncio
import logging
import queue
import threading
from dataclasses import dataclass
from typing import Any

from llm_worker.engine.llm_engine import RequestOutput, RequestRejected
from llm_worker.schemas import ErrorCode, SamplingParams

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EngineRequest:
    request_id: str
    prompt_token_ids: list[int]
    params: SamplingParams
    priority: int
    cache_salt: str | None
    arrival_time: float  # time.monotonic() at receipt, so queue time includes our own wait


@dataclass(frozen=True)
class Finished:
    output: RequestOutput


@dataclass(frozen=True)
class Failed:
    """Refused at admission (`code` from RequestRejected) or failed while it ran
    (internal_error): the job gets a failed result; the engine goes on."""

    request_id: str
    code: str
    message: str


@dataclass(frozen=True)
class Crashed:
    error: BaseException


EngineEvent = Finished | Failed | Crashed


def _event(output: RequestOutput) -> Finished | Failed:
    if output.error is not None:  # its finish reason is the code: a refused constraint's or ours
        invalid = output.finish_reason == ErrorCode.INVALID
        return Failed(output.request_id, ErrorCode.INVALID if invalid else ErrorCode.INTERNAL,
                      output.error)  # fmt: skip
    return Finished(output)

_STOP = object()


class EngineThread:
    def __init__(self, engine: Any, events: "asyncio.Queue[EngineEvent]") -> None:
        self._engine = engine
        self._events = events
        self._loop = asyncio.get_running_loop()
        self._commands: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="engine", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def submit(self, request: EngineRequest) -> None:
        self._commands.put(request)

    def abort(self, request_id: str) -> None:
        self._commands.put(request_id)

    async def stop(self) -> None:
        self._commands.put(_STOP)
        await asyncio.to_thread(self._thread.join)

    def _emit(self, event: EngineEvent) -> None:
        self._loop.call_soon_threadsafe(self._events.put_nowait, event)

    def _emit_all(self, events: list[EngineEvent]) -> None:
        """One callback for a step's events: the loop takes them in one turn, so the results
        of jobs that finished together are settled together (one publish, one ack)."""
        if events:
            self._loop.call_soon_threadsafe(self._put_all, events)

    def _put_all(self, events: list[EngineEvent]) -> None:
        for event in events:
            self._events.put_nowait(event)

    def _run(self) -> None:
        try:
            while self._apply_commands():
                if self._engine.has_unfinished_requests():
                    self._emit_all([_event(output) for output in self._engine.step()])
        except BaseException as exc:  # the service must learn that nothing will finish now
            log.exception("engine thread crashed")
            self._emit(Crashed(exc))

    def _apply_commands(self) -> bool:
        """Apply queued commands; blocks while the engine is idle. False: stop."""
        block = not self._engine.has_unfinished_requests()
        while True:
            try:
                command = self._commands.get(block=block)
            except queue.Empty:
                return True
            block = False
            if command is _STOP:
                return False
            if isinstance(command, str):
                self._engine.abort(command)
                continue
            assert isinstance(command, EngineRequest)
            try:
                self._engine.add_request(
                    command.request_id, command.prompt_token_ids, command.params,
                    priority=command.priority, cache_salt=command.cache_salt,
                    arrival_time=command.arrival_time,
                )
            except RequestRejected as exc:
                self._emit(Failed(command.request_id, exc.code, exc.message))
