from tests.brokers import anyio_backend, kafka_bootstrap, private_redis, redis_url, unique_name

__all__ = ["anyio_backend", "kafka_bootstrap", "private_redis", "redis_url", "unique_name"]
