"""Job sources and result sinks: Redis Streams, Kafka, in-process memory."""
