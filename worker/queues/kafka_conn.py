"""KafkaSettings -> aiokafka keyword arguments (security passthrough) and topic creation."""

import contextlib

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError
from aiokafka.helpers import create_ssl_context

from worker.service_settings import KafkaSettings


def client_kwargs(settings: KafkaSettings) -> dict[str, object]:
    """Connection and security options shared by consumer, producer and admin client."""
    kwargs: dict[str, object] = {
        "bootstrap_servers": settings.bootstrap_servers,
        "security_protocol": settings.security_protocol,
    }
    if settings.security_protocol in ("SSL", "SASL_SSL"):
        kwargs["ssl_context"] = create_ssl_context(
            cafile=settings.ssl_cafile, certfile=settings.ssl_certfile, keyfile=settings.ssl_keyfile
        )
    if settings.security_protocol.startswith("SASL"):
        if settings.sasl_mechanism is None or settings.sasl_username is None:
            raise ValueError("SASL needs kafka.sasl_mechanism and kafka.sasl_username")
        kwargs["sasl_mechanism"] = settings.sasl_mechanism
        kwargs["sasl_plain_username"] = settings.sasl_username
        if settings.sasl_password is not None:
            kwargs["sasl_plain_password"] = settings.sasl_password.get_secret_value()
    return kwargs


async def ensure_topics(settings: KafkaSettings) -> None:
    """Create the jobs, results and dead-letter topics if missing, so the jobs topic gets
    `num_partitions` (partitions bound how many workers share the work) rather than a broker
    default from auto-creation."""
    admin = AIOKafkaAdminClient(**client_kwargs(settings))
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        wanted = [
            NewTopic(name, num_partitions=settings.num_partitions, replication_factor=1)
            for name in (settings.jobs_topic, settings.results_topic, settings.dead_letter_topic)
            if name not in existing
        ]
        if wanted:
            # another worker may have created them first
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics(wanted)
    finally:
        await admin.close()
