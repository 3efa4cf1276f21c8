"""``RedisBroker``: a Hub's rooms across processes and machines through Redis.

Two connections per process (:class:`~evws.brokers.redis_link.RedisLink`):
a *subscriber* (``SUBSCRIBE``/``UNSUBSCRIBE`` only: a subscribed RESP2
connection can do nothing else) and a *command* connection for publishing
and for reading streams.

Rooms and channels: room ``R`` is channel ``<prefix>room:R``; a recoverable
room also has the stream ``<prefix>stream:R``. The subscriber subscribes to
a room's channel when the hub's first local member joins and unsubscribes
when the last leaves, so Redis sends this process only the rooms it has
members in.

A message on the wire (channel payload)::

    origin (8 bytes) | seq (8, big-endian) | opcode (1) | id length (1) | stream id | payload

``origin`` is random per broker and ``seq`` counts its publishes. A publish
that was written but not yet answered when the command connection dropped
is sent again after the reconnect (it may or may not have reached Redis);
receivers drop any message whose ``seq`` is not above the last one seen
from that origin in that room, so a resent duplicate is never delivered.

Publishing while Redis is down: messages wait in a bounded queue
(``max_pending`` messages, ``max_pending_bytes`` bytes, counting those in
flight) and are sent in order once the command connection is back. When the
queue is full, ``publish`` raises :class:`~evws.BrokerUnavailable`: a message
is never dropped silently.

Recoverable rooms (beyond pub/sub's at-most-once): ``publish`` runs a small
Lua script that ``XADD``s the message to the room's stream (``MAXLEN ~
stream_maxlen``) and ``PUBLISH``es it with its stream id, atomically, so the
channel order is the stream order. Each process remembers, per room, the id
of the last message it delivered. After the subscriber reconnects and
``SUBSCRIBE`` is confirmed, live messages of the room are held back while
``XRANGE`` reads the stream from that id on; the fetched ones are delivered,
then the held-back ones, each at most once (ids only grow) and in order. The
check is exact: if the stream still holds the last delivered id, nothing was
missed; if not (trimmed past it, the key is gone, or Redis restarted without
persistence -- ``INFO server`` shows a new ``run_id``), the hub's
``recovery`` event says ``recovered=False`` with the reason, and delivery
goes on with what the stream has. When a recoverable room gets its first
local member, its starting point is the stream's last id read *before*
subscribing, then the same fetch closes the gap between the two.
"""

from __future__ import annotations

import hashlib
import logging
import os
import struct
from collections import deque
from typing import Any, Optional

from ..errors import BrokerError, BrokerUnavailable, WaitTimeout
from ..reactor.condvar import CondVar
from ..reactor.loop import Loop, get_loop
from .base import Broker, Delivery
from .redis_link import RedisLink, default_name, parse_redis_url

__all__ = ["RedisBroker"]

log = logging.getLogger("evws.redis")

_HEAD = struct.Struct("!8sQB")  # origin, seq, opcode
_HEAD_SIZE = _HEAD.size

# XADD then PUBLISH the message with its id, atomically (one script run):
# the channel carries the messages in the stream's order.
_PUBLISH_SCRIPT = """\
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[3], '*', 'h', ARGV[1], 'b', ARGV[2])
redis.call('PUBLISH', KEYS[2], ARGV[1] .. string.char(#id) .. id .. ARGV[2])
return id
"""

_SCRIPT_SHA = hashlib.sha1(_PUBLISH_SCRIPT.encode()).hexdigest()

_FETCH_PAGE = 1000
_ZERO = (0, 0)

StreamId = tuple[int, int]


def _parse_id(raw: bytes) -> StreamId:
    ms, _, seq = raw.partition(b"-")
    return int(ms), int(seq or 0)


class _Room:
    """One subscribed room: its Redis names and its delivery state."""

    __slots__ = ("name", "channel", "stream", "recoverable", "last", "last_raw", "seen",
                 "state", "held", "run_id", "initial", "fetched", "check", "waiting", "gap")

    def __init__(self, name: str, prefix: str, recoverable: bool) -> None:
        self.name = name
        self.channel = f"{prefix}room:{name}".encode()
        self.stream = f"{prefix}stream:{name}".encode()
        self.recoverable = recoverable
        #: the stream id of the last message delivered (recoverable rooms)
        self.last: Optional[StreamId] = None
        self.last_raw = b"0-0"
        #: origin -> the highest seq delivered from it (resent duplicates)
        self.seen: dict[bytes, int] = {}
        #: "down" (not subscribed), "baseline", "subscribing", "fetching", "live"
        self.state = "down"
        #: live messages held back while fetching: (id, raw id, origin, seq, opcode, payload)
        self.held: list[tuple[StreamId, bytes, bytes, int, int, bytes]] = []
        #: Redis run_id when ``last`` was last known to be in the stream
        self.run_id: Optional[bytes] = None
        self.initial = True
        self.fetched = 0
        #: the first page of a fetch still has to show that ``last`` is there
        self.check = False
        #: a command for this room must go out once the command link is ready
        self.waiting: Optional[str] = None
        #: why this recovery may have lost messages ("" = it did not)
        self.gap = ""


class RedisBroker(Broker):
    """Rooms across processes through Redis pub/sub (see the module docstring).

    Args:
        url: ``redis://[[user]:password@]host[:port][/db]``.
        prefix: of every channel and stream key (several apps, one Redis).
        stream_maxlen: each recoverable room's stream keeps about this many
            messages (``XADD MAXLEN ~``): how much a process can catch up on.
        max_pending: messages that may wait (down, or in flight) before
            ``publish`` raises ``BrokerUnavailable``;
        max_pending_bytes: the same bound in payload bytes.
        ping_interval / ping_timeout: the application keepalive of both
            connections; keepalive_idle: TCP keepalive's idle time.
        backoff_initial / backoff_max: the reconnect delays (doubling, jittered).
    """

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        *,
        loop: Optional[Loop] = None,
        prefix: str = "evws:",
        stream_maxlen: int = 10000,
        max_pending: int = 10000,
        max_pending_bytes: int = 16 << 20,
        connect_timeout: float = 5.0,
        ping_interval: Optional[float] = 10.0,
        ping_timeout: float = 5.0,
        keepalive_idle: float = 30.0,
        backoff_initial: float = 0.05,
        backoff_max: float = 5.0,
    ) -> None:
        self.address = parse_redis_url(url)
        self.url = url
        self.loop = loop if loop is not None else get_loop()
        self.prefix = prefix
        self.stream_maxlen = stream_maxlen
        self.max_pending = max_pending
        self.max_pending_bytes = max_pending_bytes
        #: random per broker: tells this process's messages apart on the wire
        self.origin = os.urandom(8)
        #: the ``run_id`` of the Redis server (``INFO server``), once known
        self.run_id: Optional[bytes] = None
        #: times the command connection found a new ``run_id`` (Redis restarted)
        self.restarts = 0
        self._seq = 0
        self._rooms: dict[str, _Room] = {}
        self._by_channel: dict[bytes, _Room] = {}
        self._confirming: dict[bytes, int] = {}  # SUBSCRIBEs sent, not yet confirmed
        self._settling: set[str] = set()  # rooms whose subscription is not confirmed yet
        self._pending: deque[tuple[str, bytes, int]] = deque()   # (room, command, size)
        self._in_flight: deque[tuple[str, bytes, int]] = deque()
        self._pending_bytes = 0
        self._healthy = False
        self._closed = False
        options: dict[str, Any] = dict(
            connect_timeout=connect_timeout, ping_interval=ping_interval,
            ping_timeout=ping_timeout, keepalive_idle=keepalive_idle,
            backoff_initial=backoff_initial, backoff_max=backoff_max)
        self._sub = RedisLink(self.address, self.loop, name=default_name("sub", self.origin.hex()[:8]),
                              on_ready=self._sub_ready, on_down=self._link_down,
                              on_push=self._on_push, **options)
        self._cmd = RedisLink(self.address, self.loop, name=default_name("pub", self.origin.hex()[:8]),
                              on_ready=self._cmd_ready, on_down=self._link_down,
                              setup=self._cmd_setup, **options)
        self._sub.start()
        self._cmd.start()

    # -- state -----------------------------------------------------------------

    @property
    def healthy(self) -> bool:
        """True while both connections to Redis are up."""
        return self._healthy

    @property
    def last_error(self) -> Optional[BaseException]:
        """Why a connection to Redis last failed to come up or was lost, or None.

        Kept after the connection recovers: with :attr:`healthy` it tells a
        program that waits for Redis at start-up why it is still waiting
        (refused, timed out, AUTH refused...).
        """
        errors = [e for e in (self._cmd.last_error, self._sub.last_error) if e is not None]
        return errors[0] if errors else None

    def wait_connected(self, timeout: float = 5.0) -> None:
        """Run the loop until both connections to Redis are up: the start-up check.

        Gives up at the first attempt that fails (a refused connection, a
        refused AUTH, a dropped handshake) or after ``timeout`` seconds: at
        start-up these are mostly configuration errors, which waiting would
        not fix, and the caller should say so at once. The broker itself
        keeps reconnecting in the background either way, so a program that
        goes on without Redis (a worker started during an outage) is back in
        its rooms once Redis is; the hub's ``healthy`` event says when.

        A blocking wait, like ``CondVar.recv``: call it before the loop runs,
        never from a loop callback.

        Raises:
            BrokerError: ``cannot reach Redis at HOST:PORT: <why>``, or the
                broker is closed.
        """
        if self._closed:
            raise BrokerError("the Redis broker is closed")
        if self._healthy:
            return
        links = (self._cmd, self._sub)
        before = [link.last_error for link in links]
        done = CondVar(self.loop)

        def failed() -> bool:
            return any(link.last_error is not seen for link, seen in zip(links, before))

        def check() -> None:
            if not done.ready and (self._healthy or self._closed or failed()):
                done.send()

        # Polled: a link reports a failed attempt only through last_error.
        poll = self.loop.timer(0.01, check, interval=0.01)
        try:
            done.recv(timeout=timeout)
        except WaitTimeout:
            pass
        finally:
            poll.cancel()
        if self._closed:
            raise BrokerError("the Redis broker was closed while waiting for Redis")
        if not self._healthy:
            errors = [link.last_error for link, seen in zip(links, before)
                      if link.last_error is not seen]
            why = errors[0] if errors else f"no answer within {timeout:g} s"
            raise BrokerError(f"cannot reach Redis at {self.address.host}:{self.address.port}: "
                              f"{why}")

    @property
    def pending(self) -> int:
        """Publishes not yet answered by Redis (queued while down, or in flight)."""
        return len(self._pending) + len(self._in_flight)

    def _update_health(self, error: Optional[BaseException] = None) -> None:
        healthy = self._sub.ready and self._cmd.ready and not self._closed
        if healthy == self._healthy:
            return
        self._healthy = healthy
        if healthy:
            log.info("Redis at %s:%d: connected (subscriber and publisher)",
                        self.address.host, self.address.port)
        else:
            log.warning("Redis at %s:%d: down (%s); %d publish(es) waiting",
                        self.address.host, self.address.port, error, self.pending)
        if self.hub is not None:
            self.hub.broker_health(healthy, error)

    def _link_down(self, link: RedisLink, error: BaseException) -> None:
        if link is self._sub:
            self._confirming.clear()
            self._settling = set(self._rooms)
            for room in self._rooms.values():
                room.state = "down"
                room.held.clear()
                if room.waiting == "fetch":
                    room.waiting = None  # the fetch follows the new SUBSCRIBE
                if room.last is not None:
                    room.initial = False  # what follows is a recovery, checked and reported
        else:
            # Written but unanswered: resend after the reconnect, first (the
            # receivers' seq check drops it if it did reach Redis).
            while self._in_flight:
                self._pending.appendleft(self._in_flight.pop())
            for room in self._rooms.values():
                if room.state == "baseline":
                    room.waiting = "baseline"
                elif room.state == "fetching":
                    room.waiting = "fetch"
        self._update_health(error)

    # -- the command connection ------------------------------------------------------

    def _cmd_setup(self) -> list[tuple[tuple[Any, ...], Any]]:
        return [(("SCRIPT", "LOAD", _PUBLISH_SCRIPT), self._script_loaded),
                (("INFO", "server"), self._server_info)]

    def _script_loaded(self, reply: Any) -> None:
        if isinstance(reply, Exception):
            # Not fatal for plain rooms; each recoverable publish will fail loudly.
            log.error("Redis refused the publish script (recoverable rooms cannot "
                      "publish): %s", reply)

    def _server_info(self, reply: Any) -> None:
        if isinstance(reply, Exception):
            return
        for line in reply.splitlines():
            if line.startswith(b"run_id:"):
                run_id = line[7:].strip()
                if self.run_id is not None and run_id != self.run_id:
                    self.restarts += 1
                    log.warning("Redis at %s:%d restarted (new run_id); recoverable rooms "
                                "will be checked", self.address.host, self.address.port)
                self.run_id = run_id

    def _cmd_ready(self, link: RedisLink) -> None:
        for room in list(self._rooms.values()):
            waiting, room.waiting = room.waiting, None
            if waiting == "baseline":
                self._baseline(room)
            elif waiting == "fetch":
                self._fetch(room, room.last_raw, first=room.check)
        self._flush_pending()
        self._update_health()

    def _flush_pending(self) -> None:
        """Send the publishes that waited, in order, once this process listens.

        Publishes wait while a subscription of this process is not confirmed
        (a room just joined, or every room after a reconnect), so that its own
        members get what is published after they joined: PUBLISH and
        SUBSCRIBE travel on different connections and Redis could otherwise
        run the PUBLISH first. Other processes get a message if they are
        subscribed by then (plain rooms are at most once; recoverable rooms
        catch up from the stream either way).
        """
        if not self._pending or not self._cmd.ready:
            return
        if self._settling or (self._rooms and not self._sub.ready):
            return
        link = self._cmd
        while self._pending:
            item = self._pending.popleft()
            self._in_flight.append(item)
            link.send_packed(item[1], self._published)

    def publish(self, room: str, opcode: int, payload: bytes, recoverable: bool) -> None:
        if self._closed:
            raise BrokerError("the Redis broker is closed")
        size = len(payload)
        if (self.pending >= self.max_pending
                or self._pending_bytes + size > self.max_pending_bytes):
            raise BrokerUnavailable(
                f"Redis publish queue full ({self.pending} messages, {self._pending_bytes} "
                f"bytes; Redis {'up' if self._cmd.ready else 'down'}): message not sent",
                self.pending)
        self._seq += 1
        head = _HEAD.pack(self.origin, self._seq, opcode)
        channel = f"{self.prefix}room:{room}".encode()
        pack = self._cmd.pack_command
        if recoverable:
            stream = f"{self.prefix}stream:{room}".encode()
            command = pack(("EVALSHA", _SCRIPT_SHA, 2, stream,
                            channel, head, payload, self.stream_maxlen))
        else:
            command = pack(("PUBLISH", channel, head + b"\x00" + payload))
        self._pending_bytes += size
        self._pending.append((room, command, size))
        self._flush_pending()

    def _published(self, reply: Any) -> None:
        room, _, size = self._in_flight.popleft()
        self._pending_bytes -= size
        if isinstance(reply, Exception):
            log.error("Redis refused a publish to room %r: %s", room, reply)
            if self.hub is not None:
                self.hub.broker_publish_failed(room, BrokerError(f"Redis: {reply}"))

    # -- subscriptions -------------------------------------------------------------

    def subscribe(self, room: str, recoverable: bool) -> None:
        if self._closed:
            return
        state = _Room(room, self.prefix, recoverable)
        self._rooms[room] = state
        self._by_channel[state.channel] = state
        self._settling.add(room)
        if recoverable:
            self._baseline(state)
        elif self._sub.ready:
            self._send_subscribe(state)

    def unsubscribe(self, room: str) -> None:
        state = self._rooms.pop(room, None)
        if state is None:
            return
        if self._by_channel.get(state.channel) is state:
            del self._by_channel[state.channel]
        state.state = "gone"
        self._settling.discard(room)
        if self._sub.ready:
            self._sub.send(("UNSUBSCRIBE", state.channel))
        self._flush_pending()

    def _current(self, room: _Room) -> bool:
        return self._rooms.get(room.name) is room

    def _send_subscribe(self, room: _Room) -> None:
        room.state = "subscribing"
        self._confirming[room.channel] = self._confirming.get(room.channel, 0) + 1
        self._sub.send(("SUBSCRIBE", room.channel))

    def _sub_ready(self, link: RedisLink) -> None:
        for room in self._rooms.values():
            if room.recoverable and room.last is None:
                if room.state != "baseline":
                    self._baseline(room)  # its subscribe follows the baseline
            else:
                self._send_subscribe(room)
        self._update_health()

    def _baseline(self, room: _Room) -> None:
        """The starting point of a recoverable room: the stream's last id, before subscribing."""
        room.state = "baseline"
        if not self._cmd.ready:
            room.waiting = "baseline"
            return

        def got(reply: Any) -> None:
            if not self._current(room) or room.state != "baseline":
                return
            if isinstance(reply, Exception):
                log.error("XREVRANGE %r failed: %s", room.stream, reply)
                reply = []
            room.last, room.last_raw = _ZERO, b"0-0"
            if reply:
                room.last_raw = reply[0][0]
                room.last = _parse_id(room.last_raw)
            room.run_id = self.run_id
            room.initial = True
            if self._sub.ready:
                self._send_subscribe(room)
            else:
                room.state = "down"
        self._cmd.send(("XREVRANGE", room.stream, "+", "-", "COUNT", 1), got)

    def _fetch(self, room: _Room, start: bytes, first: bool) -> None:
        """XRANGE the room's stream from ``start`` (inclusive on the first page)."""
        room.state = "fetching"
        if first:
            room.fetched = 0
            room.gap = ""
            room.check = not room.initial
        if not self._cmd.ready:
            room.waiting = "fetch"
            return
        bound = start if first or start == b"-" else b"(" + start

        def got(reply: Any) -> None:
            if not self._current(room) or room.state != "fetching":
                return
            if isinstance(reply, Exception):
                log.error("XRANGE %r failed: %s", room.stream, reply)
                reply = []
            self._fetched(room, reply)
        self._cmd.send(("XRANGE", room.stream, bound, "+", "COUNT", _FETCH_PAGE), got)

    def _gap(self, room: _Room, entries: list[Any]) -> str:
        """Why the stream cannot prove that nothing was missed ("" if it does)."""
        restarted = self.run_id != room.run_id
        if room.last_raw != b"0-0":
            if entries and entries[0][0] == room.last_raw:
                return ""  # the last delivered message is still there: no gap
            if restarted:
                return "Redis restarted without persistence (new run_id, stream lost)"
            if not entries:
                return "the stream is gone"
            return "the stream was trimmed past the last delivered message"
        if restarted:
            return "Redis restarted (new run_id); nothing to check the stream against"
        return ""

    def _fetched(self, room: _Room, entries: list[Any]) -> None:
        if room.check:
            room.check = False
            room.gap = self._gap(room, entries)
            if room.gap and room.last_raw != b"0-0":
                # The stream does not continue from our last id (new ids may
                # even be smaller after a restart): take all of it, the
                # origins' seqs still drop what was delivered already.
                room.last, room.last_raw = _ZERO, b"0-0"
                self._fetch(room, b"-", first=False)
                return
        batch: list[Delivery] = []
        for raw_id, fields in entries:
            values = dict(zip(fields[::2], fields[1::2]))
            head = values.get(b"h", b"")
            if len(head) != _HEAD_SIZE:
                continue
            origin, seq, opcode = _HEAD.unpack(head)
            self._accept(room, _parse_id(raw_id), raw_id, origin, seq, opcode,
                         values.get(b"b", b""), batch)
        room.fetched += len(batch)
        if batch and self.hub is not None:
            self.hub.broker_deliver(room.name, batch)
        if not self._current(room) or room.state != "fetching":
            return
        if len(entries) >= _FETCH_PAGE:
            self._fetch(room, entries[-1][0], first=False)
            return
        # Caught up: what arrived live meanwhile, then live from now on.
        held, room.held = room.held, []
        batch = []
        for sid, raw_id, origin, seq, opcode, payload in held:
            self._accept(room, sid, raw_id, origin, seq, opcode, payload, batch)
        room.state = "live"
        room.run_id = self.run_id
        if batch and self.hub is not None:
            self.hub.broker_deliver(room.name, batch)
        if not room.initial:
            reason = room.gap
            if not reason:
                log.info("room %r recovered: %d message(s) fetched", room.name, room.fetched)
            else:
                log.warning("room %r NOT fully recovered (%s); %d message(s) fetched",
                            room.name, reason, room.fetched)
            if self.hub is not None:
                self.hub.broker_recovery(room.name, not reason, room.fetched, reason)
        room.initial = False

    def _accept(self, room: _Room, sid: StreamId, raw_id: bytes, origin: bytes, seq: int,
                opcode: int, payload: bytes, batch: list[Delivery]) -> None:
        """Deliver unless already delivered (by stream id, then by origin's seq)."""
        if room.recoverable:
            if room.last is not None and sid <= room.last:
                return
            room.last, room.last_raw = sid, raw_id
        if seq <= room.seen.get(origin, 0):
            return
        room.seen[origin] = seq
        batch.append((opcode, payload))

    def _on_push(self, replies: list[list[Any]]) -> None:
        batches: dict[str, list[Delivery]] = {}
        by_channel = self._by_channel
        for reply in replies:
            kind = reply[0]
            if kind == b"message":
                room = by_channel.get(reply[1])
                if room is None:
                    continue  # unsubscribed meanwhile
                data = reply[2]
                if len(data) < _HEAD_SIZE + 1:
                    continue
                origin, seq, opcode = _HEAD.unpack_from(data)
                n = data[_HEAD_SIZE]
                start = _HEAD_SIZE + 1
                raw_id = data[start:start + n]
                payload = data[start + n:]
                if room.recoverable:
                    sid = _parse_id(raw_id) if n else _ZERO
                    if room.state != "live":
                        room.held.append((sid, raw_id, origin, seq, opcode, payload))
                        continue
                    batch = batches.get(room.name)
                    if batch is None:
                        batch = batches[room.name] = []
                    self._accept(room, sid, raw_id, origin, seq, opcode, payload, batch)
                else:
                    if seq <= room.seen.get(origin, 0):
                        continue
                    room.seen[origin] = seq
                    batch = batches.get(room.name)
                    if batch is None:
                        batch = batches[room.name] = []
                    batch.append((opcode, payload))
            elif kind == b"subscribe":
                channel = reply[1]
                left = self._confirming.get(channel, 0) - 1
                if left > 0:
                    self._confirming[channel] = left
                    continue
                self._confirming.pop(channel, None)
                room = by_channel.get(channel)
                if room is not None and room.state == "subscribing":
                    self._settling.discard(room.name)
                    if room.recoverable:
                        self._fetch(room, room.last_raw, first=True)
                    else:
                        room.state = "live"
                    if self._pending:
                        self._flush_pending()
        hub = self.hub
        if hub is not None:
            for name, batch in batches.items():
                if batch:
                    hub.broker_deliver(name, batch)

    # -- closing -----------------------------------------------------------------

    def close(self) -> None:
        """Close both connections; messages still waiting are dropped (and counted in the log)."""
        if self._closed:
            return
        self._closed = True
        if self.pending:
            log.warning("Redis broker closed with %d publish(es) not confirmed", self.pending)
        self._sub.close()
        self._cmd.close()
        self._rooms.clear()
        self._by_channel.clear()
        self._healthy = False

    def __repr__(self) -> str:
        state = "healthy" if self._healthy else "down"
        return f"<evws.RedisBroker {self.url} {state} rooms={len(self._rooms)}>"
