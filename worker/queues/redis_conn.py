"""One place that turns RedisSettings into a client: AUTH, TLS, reconnect backoff, a clear
error for bad credentials or a failed TLS handshake."""

import os
import ssl
from typing import Any
from urllib.parse import urlsplit

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import AuthenticationError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from llm_worker.queues.errors import (
    BrokerAuthError,
    BrokerTLSError,
    BrokerUnavailable,
    error_behind,
    tls_failure,
)
from llm_worker.service_settings import RedisSettings

# Errors after which a command is retried on a fresh connection (broker restart, network blip).
TRANSIENT_ERRORS: tuple[type[Exception], ...] = (RedisConnectionError, RedisTimeoutError)


def redis_address(settings: RedisSettings) -> str:
    """host:port without credentials, for messages."""
    parts = urlsplit(settings.url)
    return f"{parts.hostname}:{parts.port or 6379}"


def make_client(settings: RedisSettings, num_retries: int = 6) -> aioredis.Redis:
    kwargs: dict[str, Any] = {
        "socket_connect_timeout": settings.socket_connect_timeout_s,
        "socket_timeout": settings.socket_timeout_s,
        "retry": Retry(
            ExponentialBackoff(cap=settings.max_reconnect_backoff_s, base=0.05), num_retries
        ),
        "retry_on_error": list(TRANSIENT_ERRORS),
        "health_check_interval": 15,
    }
    if settings.username is not None:
        kwargs["username"] = settings.username
    if settings.password is not None:
        kwargs["password"] = settings.password.get_secret_value()
    if settings.url.startswith("rediss://"):
        kwargs["ssl_cert_reqs"] = settings.ssl_cert_reqs
        for name in ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile"):
            value = getattr(settings, name)
            if value is not None:
                kwargs[name] = value
    return aioredis.Redis.from_url(settings.url, **kwargs)


async def verify(client: aioredis.Redis, settings: RedisSettings) -> None:
    """PING once so a wrong password, a TLS mismatch or an unreachable server fails start-up, not
    job 1. The first PING goes through a client that never retries: credentials and certificates
    do not fix themselves, and redis-py's nested command and connect retries would spend up to a
    minute on them. Only an error that may pass (refused, timed out) gets the client's retries."""
    address = redis_address(settings)
    tls = settings.url.startswith("rediss://")
    if tls:
        _check_tls_files(settings)
    probe = make_client(settings, num_retries=0)
    try:
        await _ping(probe, address)
        return
    except BrokerUnavailable as exc:
        reason = error_behind(exc, OSError)  # redis-py keeps only the message of its cause
        if tls and isinstance(reason, (ssl.SSLError, ConnectionResetError)):
            raise tls_failure(
                f"Redis at {address}", reason, settings.ssl_ca_certs, "redis.ssl_ca_certs"
            ) from exc
        if not tls and isinstance(reason, ConnectionResetError):
            raise BrokerUnavailable(
                f"{exc} (the server closed the connection at once: a TLS-only Redis needs a "
                "rediss:// URL)"
            ) from exc
    finally:
        await probe.aclose()
    await _ping(client, address)


async def _ping(client: aioredis.Redis, address: str) -> None:
    try:
        reply = await client.ping()
    except AuthenticationError as exc:
        raise BrokerAuthError(f"Redis at {address} rejected the credentials: {exc}") from exc
    except ResponseError as exc:
        if "NOAUTH" in str(exc) or "WRONGPASS" in str(exc):
            raise BrokerAuthError(f"Redis at {address} requires a valid password: {exc}") from exc
        raise
    except TRANSIENT_ERRORS as exc:
        raise BrokerUnavailable(f"Redis at {address} is not reachable: {exc}") from exc
    if reply is not True:
        raise BrokerUnavailable(f"Redis at {address} answered PING with {reply!r}")


def _check_tls_files(settings: RedisSettings) -> None:
    # redis-py reports a missing file as a bare "No such file or directory", naming none.
    for name in ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile"):
        path = getattr(settings, name)
        if path is not None and not (os.path.isfile(path) and os.access(path, os.R_OK)):
            raise BrokerTLSError(f"redis.{name} {path!r} is not a readable file")
