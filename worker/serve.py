"""Start a worker: brokers checked first, then the model, telemetry, and the service until
SIGTERM / SIGINT. The CLI's `serve` and `python -m worker.service` both come here."""

import asyncio
import logging
import signal
import sys
from typing import Any

from worker.http_endpoints import Endpoints
from worker.queues.errors import QueueError
from worker.queues.factory import build_queue
from worker.service import Service
from worker.service_settings import ServiceSettings
from worker.telemetry import build_telemetry


async def serve(service_settings: ServiceSettings, engine_settings: Any) -> None:
    """Run a worker until SIGTERM / SIGINT, then shut down gracefully (the CLI's `serve`).

    The brokers are checked before the model loads, so a wrong password or an unreachable
    broker fails in seconds with BrokerAuthError / BrokerUnavailable."""
    from worker.engine.llm_engine import LLMEngine

    source, sink = build_queue(service_settings)
    await sink.start()
    await source.start()
    engine = await asyncio.to_thread(LLMEngine.from_settings, engine_settings)
    served_model = (service_settings.served_model or engine_settings.served_model_name
                    or engine_settings.model)
    telemetry = None
    if service_settings.metrics_port is not None:
        telemetry = build_telemetry(
            service_settings.worker_id, served_model, service_settings.queue
        )
        telemetry.bind_engine(engine.stats)
        telemetry.bind_inter_token_latency(engine)
    service = Service(service_settings, source, sink, engine, served_model, telemetry)
    if telemetry is not None:
        telemetry.bind_consumer_lag(lambda: service.consumer_lag)
    endpoints = None
    if service_settings.metrics_port is not None:
        endpoints = Endpoints(service_settings.metrics_host, service_settings.metrics_port,
                              live=service.is_live, ready=lambda: service.ready).start()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, service.stop)
    try:
        await service.run(queues_started=True)
    finally:
        if endpoints is not None:
            endpoints.stop()
        if telemetry is not None:
            telemetry.shutdown()


def main() -> int:
    """One worker configured by environment variables only (`python -m worker.service`)."""
    from worker.config import EngineSettings

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    try:
        asyncio.run(serve(ServiceSettings(), EngineSettings()))
    except QueueError as exc:
        print(f"llm-worker: error: {exc}", file=sys.stderr)
        return 2
    return 0


