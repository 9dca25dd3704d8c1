from tests.brokers import anyio_backend, kafka_bootstrap, private_redis, redis_url, unique_name
from tests.secure_brokers import other_ca_certs, secure_kafka, tls_certs

__all__ = [
    "anyio_backend", "kafka_bootstrap", "other_ca_certs", "private_redis", "redis_url",
    "secure_kafka", "tls_certs", "unique_name",
]
