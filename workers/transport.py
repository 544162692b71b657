"""The broker transport of the workers: kombu's Redis transport, except that a message is taken off
its queue and recorded as unacknowledged in one atomic step.

kombu's own transport takes a message with BRPOP and then records it in the ``unacked`` hash with
a second command (``QoS.append``). A worker killed between the two, or a Redis that shuts down
between them, loses the message: it is on no queue and in no hash, and no sweep brings it back
(kombu#305). tests/faults/test_killed_workers.py lost one purchase that way in 3 of 7 runs on
kombu's transport, and CI once lost 1 of 240 in tests/faults/test_broker_restart.py, most likely
the same way.

Here TAKE, a Lua script, pops the message and records it in ``unacked`` and ``unacked_index``
exactly as ``QoS.append`` would — both or neither. From then on kombu's machinery is unchanged:
the ack removes the record, a rejected message is put back, and a visibility sweep
(``restore_visible``) puts back the messages of a worker that died. A body with no delivery tag
(no Celery client sends one) cannot be acknowledged or restored by tag: the same step moves it to
the HELD list, which it leaves only once quarantined (workers.consumer, workers.batch).

A script cannot block, so when the queues are empty the channel waits with ``BLMOVE q q RIGHT
RIGHT``: that blocks until ``q`` holds a message and then moves its last element to the end of
the same list — it leaves the queue as it was — and the next take takes the message. One such
command waits on one list, so the channel waits on the queue it last took from, at most WAIT_S,
then takes from every queue again: an idle worker meets a message on that queue at once, and one
on its other queues within WAIT_S. Under load it takes without waiting.

Left as kombu has them: ``basic_get`` (``SimpleQueue.get``), which the workers do not use, and
which still pops first and records after. Not supported: kombu's ``global_keyprefix``, which this
project does not set.
"""

from __future__ import annotations

from queue import Empty
from time import monotonic, time

from kombu.transport import redis as kombu_redis
from kombu.transport import virtual
from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import loads

UNACKED, UNACKED_INDEX = "unacked", "unacked_index"  # kombu's Redis transport keys (its defaults)
HELD = "matomete:batch:held"  # bodies taken with no delivery tag, until they are quarantined
WAIT_S = 0.25
NO_TAG = "no delivery tag: not a message a Celery client sends"

# KEYS: unacked, unacked_index, held, then the queues in the order to take from; ARGV: how many,
# now. Pops like kombu's BRPOP (the oldest first, from the first queue that has any) and records
# each message as kombu's QoS.append does: [payload, exchange, routing_key] by tag, its time in
# the index. A body with no string delivery tag goes to the held list instead, in the same step.
# Returns queue, raw, tag triples (tag '' for a held body), so that the worker acknowledges exactly
# what was recorded.
TAKE = """
local out, n = {}, tonumber(ARGV[1])
for q = 4, #KEYS do
  while #out < 3 * n do
    local raw = redis.call('RPOP', KEYS[q])
    if not raw then break end
    local ok, m = pcall(cjson.decode, raw)
    local props = ok and type(m) == 'table' and m['properties']
    local tag = type(props) == 'table' and props['delivery_tag']
    if type(tag) == 'string' and tag ~= '' then
      local di = props['delivery_info']
      if type(di) ~= 'table' then di = {} end
      local exchange, key = di['exchange'], di['routing_key']
      if type(exchange) ~= 'string' then exchange = '' end
      if type(key) ~= 'string' then key = KEYS[q] end
      redis.call('ZADD', KEYS[2], ARGV[2], tag)
      redis.call('HSET', KEYS[1], tag, '[' .. raw .. ',' .. cjson.encode(exchange) .. ',' .. cjson.encode(key) .. ']')
    else
      tag = ''
      redis.call('RPUSH', KEYS[3], raw)
    end
    table.insert(out, KEYS[q])
    table.insert(out, raw)
    table.insert(out, tag)
  end
end
return out
"""


def take_keys(queues: list[str]) -> list[str]:
    """TAKE's KEYS, to take from ``queues`` in that order."""
    return [UNACKED, UNACKED_INDEX, HELD, *queues]


def take_reply(reply: list) -> list[tuple[str, bytes, str | None]]:
    """TAKE's reply as (queue, raw, tag) triples; tag None for a held body."""
    return [(bytes_to_str(q), raw, bytes_to_str(tag) or None)
            for q, raw, tag in zip(reply[::3], reply[1::3], reply[2::3])]


class Unreadable(Exception):
    """A queue entry that is no kombu message, as taken: still recorded by its tag or, with no
    tag, in the HELD list, until it is set aside and discarded."""

    def __init__(self, channel: Channel, raw: bytes, tag: str | None, detail: str):
        super().__init__(detail)
        self.channel, self.raw, self.tag, self.detail = channel, raw, tag, detail

    def discard(self) -> None:
        """Remove the entry from Redis, once it is set aside."""
        if self.tag is None:
            with self.channel.conn_or_acquire() as client:
                client.lrem(HELD, 1, self.raw)
        else:
            self.channel.qos._remove_from_indices(self.tag).execute()


class QoS(kombu_redis.QoS):
    def append(self, message, delivery_tag) -> None:  # noqa: ANN001
        if delivery_tag == self.channel._recorded:  # TAKE recorded it already
            virtual.QoS.append(self, message, delivery_tag)
        else:
            super().append(message, delivery_tag)


class Channel(kombu_redis.Channel):
    QoS = QoS
    _recorded: str | None = None  # the tag of the message being delivered, recorded by TAKE
    _waiting = False  # the command in flight is a wait, not a take
    _wait_next = False  # the last take found the queues empty
    _last_queue: str | None = None

    def __init__(self, *args, **kwargs) -> None:  # noqa: ANN002, ANN003
        super().__init__(*args, **kwargs)
        if self.global_keyprefix:
            raise ValueError("workers.transport does not support kombu's global_keyprefix")

    def close(self) -> None:
        """kombu's, except that an entry that is no kombu message, taken as the channel closes,
        does not stop the close: it stays recorded, or held, for the sweeps."""
        if self._in_poll:
            try:
                self._brpop_read()
            except (Empty, Unreadable):
                pass
        super().close()

    def _brpop_start(self, timeout: float | None = None) -> None:
        queues = self._queue_cycle.consume(len(self.active_queues))
        if not queues:
            return
        keys = [self._q_for_pri(queue, pri) for pri in self.priority_steps for queue in queues]
        connection = self.client.connection
        self._in_poll, self._brpop_sent_at = connection, monotonic()
        self._waiting = self._wait_next
        if self._waiting:
            key = self._last_queue if self._last_queue in keys else keys[0]
            connection.send_command("BLMOVE", key, key, "RIGHT", "RIGHT", WAIT_S)
        else:
            keys = take_keys(keys)
            connection.send_command("EVAL", TAKE, len(keys), *keys, 1, time())

    def _brpop_read(self, **options) -> bool:  # noqa: ANN003
        try:
            try:
                reply = self.client.parse_response(self.client.connection, "BLMOVE" if self._waiting else "EVAL",
                                                   **options)
            except self.connection_errors:
                self.client.connection.disconnect()  # the next poll reconnects, as kombu's does
                raise
            if self._waiting or not reply:  # woken (or timed out): take next; found nothing: wait next
                self._wait_next = not self._waiting
                raise Empty()
            self._wait_next = False
            [(key, raw, tag)] = take_reply(reply)
            self._last_queue = key
            queue = key.rsplit(self.sep, 1)[0]
            self._queue_cycle.rotate(queue)
            self._hand_over(raw, tag, queue)
            return True
        finally:
            self._in_poll = None
            self._flush_brpop_reauth()

    def _hand_over(self, raw: bytes, tag: str | None, queue: str) -> None:
        try:
            payload = loads(bytes_to_str(raw))
            self.Message(payload, channel=self)  # what kombu builds from it, before Celery sees it
        except Exception as exc:  # noqa: BLE001 — any entry kombu cannot read is set aside
            raise Unreadable(self, raw, tag, f"a queue entry that is no kombu message: {type(exc).__name__}") from exc
        if tag is None:
            raise Unreadable(self, raw, tag, NO_TAG)
        self._recorded = tag
        try:
            self.connection._deliver(payload, queue)
        finally:
            self._recorded = None


class Transport(kombu_redis.Transport):
    Channel = Channel
