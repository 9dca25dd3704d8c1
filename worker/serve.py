"""Start a worker: brokers checked first, then the model, telemetry, and the service until
SIGTERM / SIGINT. The CLI's `serve` and `python -m llm_worker.serve` both come here."""

import asyncio
import concurrent.futures
import gc
import logging
import os
import signal
import sys
import threading
from typing import Any

from llm_worker.extras import MissingExtra
from llm_worker.http_endpoints import Endpoints
from llm_worker.queues.errors import QueueError
from llm_worker.queues.factory import build_queue
from llm_worker.queues.kafka import KafkaJobSource
from llm_worker.queues.redis_streams import RedisStreamSource
from llm_worker.service import Service
from llm_worker.service_settings import ServiceSettings
from llm_worker.telemetry import build_telemetry

log = logging.getLogger(__name__)


async def serve(service_settings: ServiceSettings, engine_settings: Any) -> None:
    """Run a worker until SIGTERM / SIGINT, then shut down gracefully (the CLI's `serve`).

    The brokers are checked before the model loads, so a wrong password or an unreachable
    broker fails in seconds with BrokerAuthError / BrokerUnavailable."""
    loop = asyncio.get_running_loop()
    stop_requested = asyncio.Event()  # a signal before the service runs: leave cleanly
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop_requested.set)
    served_model = (service_settings.served_model or engine_settings.served_model_name
                    or engine_settings.model)
    telemetry = None  # built first: a missing extra fails before brokers and model are touched
    if service_settings.metrics_port is not None:
        telemetry = build_telemetry(
            service_settings.worker_id, served_model, service_settings.queue
        )
    source, sink = build_queue(service_settings)
    await sink.start()
    await source.start()
    log.info("brokers ready; loading the model (a SIGTERM now stops the worker at once)")
    engine = await _load_engine(engine_settings, stop_requested)
    if engine is None:
        log.info("stopped during start-up, before taking any job")
        await source.close()
        await sink.close()
        # The model-load thread is still inside torch; letting the interpreter finalise under
        # it aborts the process (std::terminate), so leave without finalising.
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    if telemetry is not None:
        telemetry.bind_engine(engine.stats)
        telemetry.bind_inter_token_latency(engine)
        telemetry.bind_structured_outputs(engine.structured_stats)
    service = Service(service_settings, source, sink, engine, served_model, telemetry)
    if telemetry is not None:
        telemetry.bind_consumer_lag(lambda: service.consumer_lag)
        if isinstance(source, KafkaJobSource):
            partitions = source.partitions
            telemetry.bind_unreadable_ledger_records(
                lambda: partitions.num_unreadable_ledger_records)
        elif isinstance(source, RedisStreamSource):
            redis_source = source
            telemetry.bind_unreadable_run_records(lambda: redis_source.num_unreadable_run_records)
    endpoints = None
    if service_settings.metrics_port is not None:
        endpoints = Endpoints(service_settings.metrics_host, service_settings.metrics_port,
                              live=service.is_live, ready=lambda: service.ready).start()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, service.stop)
    if stop_requested.is_set():
        service.stop()
    try:
        await service.run(queues_started=True)
    finally:
        if endpoints is not None:
            endpoints.stop()
        if telemetry is not None:
            telemetry.shutdown()
        gc.unfreeze()  # what start-up froze may be collected again once the engine is gone


async def _load_engine(engine_settings: Any, stop_requested: asyncio.Event) -> Any:
    """The engine, or None when a stop came first. Loading runs on a daemon thread: a stopped
    worker exits without waiting minutes for a large model it will never use."""
    from llm_worker.engine.builder import freeze_startup_heap
    from llm_worker.engine.llm_engine import LLMEngine

    loaded: concurrent.futures.Future[Any] = concurrent.futures.Future()

    def load() -> None:
        try:
            engine = LLMEngine.from_settings(engine_settings)
            freeze_startup_heap()  # the worker serves this engine until it exits
            loaded.set_result(engine)
        except BaseException as exc:  # raised in the loop by the wrapped future
            loaded.set_exception(exc)

    threading.Thread(target=load, name="model-load", daemon=True).start()
    engine = asyncio.wrap_future(loaded)
    stopped = asyncio.ensure_future(stop_requested.wait())
    await asyncio.wait({engine, stopped}, return_when=asyncio.FIRST_COMPLETED)
    stopped.cancel()
    if engine.done():
        return engine.result()
    return None


def main() -> int:
    """One worker configured by environment variables only (`python -m llm_worker.serve`)."""
    from llm_worker.config import EngineSettings

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    try:
        asyncio.run(serve(ServiceSettings(), EngineSettings()))
    except (QueueError, MissingExtra) as exc:
        print(f"llm-worker: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
