"""One place that turns RedisSettings into a client: AUTH, TLS, reconnect backoff, a clear
error for bad credentials."""

from typing import Any
from urllib.parse import urlsplit

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import AuthenticationError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from worker.queues.errors import BrokerAuthError, BrokerUnavailable
from worker.service_settings import RedisSettings

# Errors after which a command is retried on a fresh connection (broker restart, network blip).
TRANSIENT_ERRORS: tuple[type[Exception], ...] = (RedisConnectionError, RedisTimeoutError)


def redis_address(settings: RedisSettings) -> str:
    """host:port without credentials, for messages."""
    parts = urlsplit(settings.url)
    return f"{parts.hostname}:{parts.port or 6379}"


def make_client(settings: RedisSettings) -> aioredis.Redis:
    kwargs: dict[str, Any] = {
        "socket_connect_timeout": settings.socket_connect_timeout_s,
        "socket_timeout": settings.socket_timeout_s,
        "retry": Retry(ExponentialBackoff(cap=settings.max_reconnect_backoff_s, base=0.05), 6),
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
    """PING once so a wrong password or an unreachable server fails start-up, not job 1."""
    address = redis_address(settings)
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
