"""A jobs partition's transactional producer: started by fencing the partition's last owner,
told apart once it is dead, and stopped without leaving anything running or unretrieved.

aiokafka's producer dies on a fatal error (ProducerFenced above all): its sender task ends, and
every future it left pending fails with that error, the records' send futures, each unsent
batch's drain waiter and the transaction's waiter. What the caller then sees depends on where
it was: ProducerFenced from send_offsets_to_transaction or a send future, IllegalOperation from
the next send(), an AssertionError from abort_transaction. So the producer's state, not the
exception that reached the caller, says what happened. Nothing public retrieves the drain and
transaction waiters: asyncio logs each as "exception was never retrieved" whenever the garbage
collector reaches the dead producer (and anyio's pytest plugin fails the test running then).
The private attributes read here are aiokafka 0.14's (uv.lock); aiokafka's own
TransactionContext reads its _txn_manager the same way.
"""

import asyncio

from aiokafka import AIOKafkaProducer

from llm_worker.queues.kafka_conn import client_kwargs
from llm_worker.service_settings import KafkaSettings


def transactional_id(settings: KafkaSettings, partition: int) -> str:
    """One per jobs partition and consumer group: the id the next owner fences this one by."""
    return f"{settings.group_id}/{settings.jobs_topic}/{partition}"


async def start_fencing(settings: KafkaSettings, partition: int) -> AIOKafkaProducer:
    """A started producer of the partition's transactional id that has fenced its last owner;
    nothing is left open when it fails or is cancelled half way."""
    producer = AIOKafkaProducer(**client_kwargs(settings), acks="all",
                                transactional_id=transactional_id(settings, partition))
    try:
        await producer.start()
        # Its first transaction registers the id, which aborts the last owner's open one.
        await producer.begin_transaction()
        await producer.commit_transaction()
    except BaseException:
        await stop(producer)
        raise
    return producer


def fatal_error(producer: AIOKafkaProducer) -> BaseException | None:
    """What the producer died of (ProducerFenced: another owner took its id), or None while
    it can still transact."""
    task = producer._sender.sender_task
    if task is None or not task.done() or task.cancelled():
        return None
    return task.exception()


async def stop(producer: AIOKafkaProducer) -> None:
    """Stop the producer (idempotent); after a fatal error, retrieve what its sender failed."""
    await producer.stop()
    if fatal_error(producer) is None:
        return
    accumulator = producer._message_accumulator
    batches = [*(b for queue in accumulator._batches.values() for b in queue),
               *accumulator._pending_batches]
    for waiter in [*(b._drain_waiter for b in batches), producer._txn_manager._transaction_waiter]:
        retrieve(waiter)


def retrieve(future: asyncio.Future) -> None:
    """Mark a done future's exception as seen (a no-op on one still pending)."""
    if future.done() and not future.cancelled():
        future.exception()
