"""The worker's consumer: Celery's, except that it reconnects when kombu fails to close a lost Redis
connection.

On a lost broker connection Celery's consumer collects the connection (kombu's
``Connection.collect``: close the channel, release the transport), then closes it, ignoring
connection errors. With Redis gone, the first channel close can fail part-way. The second then
restores the unacknowledged messages through a transport that ``collect`` already released, and
kombu 5.7 raises ``AttributeError`` (``'NoneType' object has no attribute 'hostname'``). That is
not a connection error, so it ended the consumer as an "unrecoverable error": the worker process
stayed alive and never decided again (seen in CI, tests/faults/test_broker_restart.py).

Here that error is logged and the consumer carries on to reconnect, as it does for every other
failure to close a dead connection. The messages it could not restore are still in Redis'
``unacked`` hash, and the visibility sweep hands them out again. What Celery's handler would have
done after the close is skipped: it lowers the prefetch count for tasks still running, so a
reconnect after this error prefetches in full.
"""

from __future__ import annotations

import logging

from celery.worker.consumer import Consumer as CeleryConsumer

__all__ = ["Consumer"]

log = logging.getLogger(__name__)


class Consumer(CeleryConsumer):
    def on_connection_error_after_connected(self, exc: Exception) -> None:
        try:
            super().on_connection_error_after_connected(exc)
        except AttributeError:
            log.warning("closing the lost broker connection failed inside kombu; reconnecting anyway",
                        exc_info=True)
