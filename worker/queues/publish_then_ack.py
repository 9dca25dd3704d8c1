"""The settlement of brokers without transactions (Redis, memory, a JSONL file): results first,
then dead letters, then acks. A death in between leaves deliveries un-acked; they come back,
find their id's content settled, and are acked without running again."""

from collections.abc import Sequence

from llm_worker.queues.protocol import Delivery, JobSource, Outcome, ResultSink, Settlement


class PublishThenAck:
    def __init__(self, source: JobSource, sink: ResultSink) -> None:
        self._source = source
        self._sink = sink

    async def commit(self, outcomes: Sequence[Outcome]) -> None:
        results = [o.result for o in outcomes if o.result is not None]
        if results:
            await self._sink.publish_many(results)
        for outcome in outcomes:
            if outcome.dead_letter is not None:
                for delivery in outcome.deliveries:
                    await self._source.dead_letter(delivery, outcome.dead_letter)
        acked = [d for o in outcomes if o.dead_letter is None for d in o.deliveries]
        if acked:
            await self._source.ack_many(acked)


class PublishThenAckSource(JobSource):
    """Base of the sources settled by PublishThenAck. Their broker hands a delivery to no other
    worker while this one holds it (a Redis entry's lease is renewed until acked or released),
    so every delivery stays owned. The rest of JobSource is each source's own: mypy refuses to
    build a subclass that leaves one of its methods out."""

    def settlement(self, sink: ResultSink) -> Settlement:
        return PublishThenAck(self, sink)

    def owns(self, delivery: Delivery) -> bool:
        return True
