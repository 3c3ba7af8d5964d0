"""Join one TCP connection and one SSH channel, with callbacks only.

Bytes flow both ways without a task or a queue. Back-pressure:

- the TCP peer reads slowly -> its transport's buffer passes the high-water
  mark -> asyncio calls ``pause_writing`` on the TCP end -> we stop reading
  the channel -> the SSH window is not replenished -> the far side stops.
- the channel's send buffer fills (window exhausted) -> net/ssh calls the
  session's ``pause_writing`` -> we stop reading the TCP socket.

So a slow reader costs at most one window plus one socket buffer of memory.

EOF is half-close: EOF from the TCP side becomes channel EOF and the reverse;
the splice ends when both directions have ended or either side fails.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, Protocol


class ByteChannel(Protocol):
    """The part of an SSH channel the splice uses."""

    def write(self, data: bytes) -> None: ...
    def write_eof(self) -> None: ...
    def close(self) -> None: ...
    def pause_reading(self) -> None: ...
    def resume_reading(self) -> None: ...


class Splice:
    """One app or endpoint connection spliced to one channel.

    Attributes:
        sent: bytes read from TCP and written to the channel.
        received: bytes read from the channel and written to TCP.
    """

    __slots__ = (
        "_chan_eof",
        "_done",
        "_on_done",
        "_tcp_eof",
        "chan",
        "chan_end",
        "early",
        "held",
        "loop",
        "on_verdict",
        "owner",
        "pending",
        "received",
        "replay",
        "replay_left",
        "sent",
        "tcp",
        "tcp_end",
        "tentative",
    )

    def __init__(
        self,
        on_done: Callable[[Splice], None] | None = None,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        self.tcp: asyncio.Transport | None = None
        self.chan: Any = None
        self.sent = 0
        self.received = 0
        self._tcp_eof = False
        self._chan_eof = False
        self._done = False
        self._on_done = on_done
        self.owner: Any = None  # whoever tracks this splice (a gateway tunnel)
        # Bytes read from TCP before the channel existed. uvloop ignores
        # pause_reading() inside connection_made, so the first read can come
        # before the pause takes effect; it is kept here, and reading is
        # paused right after it, so this holds at most one read.
        self.early: list[bytes] = []
        # Channel data waiting for this loop iteration's single writev (see
        # _ChanEnd.data_received).
        self.pending: list[bytes] | None = None
        # Passed by callers that make one per connection: Python 3.11's
        # get_running_loop() is a getpid() system call.
        self.loop = loop or asyncio.get_running_loop()
        # The reverse: channel bytes that came before the TCP side was
        # attached (gateway side, an endpoint that speaks first, such as an
        # SMTP banner, answered with the open confirmation). Held here with
        # the channel paused until attach_tcp().
        self.held: list[bytes] = []
        # Gateway side, a channel confirmed before the connector's dial
        # (early open): until the connector's first data or EOF shows the
        # dial worked, ``on_verdict(ok, reason)`` is pending, and what was
        # sent into the channel is kept in ``replay`` (up to ``replay_left``
        # bytes), so a failed dial can hand the app connection on.
        self.tentative = False
        self.on_verdict: Callable[[bool | None, str], None] | None = None
        self.replay: list[bytes] | None = None
        self.replay_left = 0
        self.tcp_end = _TcpEnd(self)
        self.chan_end = _ChanEnd(self)

    def settle(self, ok: bool | None, reason: str = "") -> None:
        """End the tentative state: True (the dial worked), False (it failed,
        ``reason``), None (the channel ended first, no verdict)."""
        self.tentative = False
        if ok is not False:
            self.replay = None
        verdict, self.on_verdict = self.on_verdict, None
        if verdict is not None:
            verdict(ok, reason)

    def keep_for_replay(self, data: bytes) -> None:
        replay = self.replay
        if replay is None:
            return
        self.replay_left -= len(data)
        if self.replay_left < 0:
            self.replay = None  # too much to hold: a failed dial ends the app connection
        else:
            replay.append(data)

    def attach_tcp(
        self, transport: asyncio.Transport, early: list[bytes] | None = None, eof: bool = False
    ) -> None:
        """Make an already-open TCP transport feed this (open) splice.

        ``early`` and ``eof`` are what the previous protocol received while
        the channel was being opened; they are passed on first.
        """
        self.tcp = transport
        transport.set_protocol(self.tcp_end)
        held, self.held = self.held, []
        for chunk in held:
            self.received += len(chunk)
            transport.write(chunk)
        if held and self.chan is not None:
            self.chan.resume_reading()
        if self._chan_eof and transport.can_write_eof() and not transport.is_closing():
            transport.write_eof()
        for chunk in early or ():
            self.tcp_end.data_received(chunk)
        if eof:
            self.tcp_end.eof_received()
        elif not transport.is_closing():
            transport.resume_reading()
        if self.chan is not None:
            # Paused in session_started until there was a TCP end to write to.
            self.chan.resume_reading()

    def _channel_ready(self) -> None:
        tcp = self.tcp
        early, self.early = self.early, []
        for chunk in early:
            self.tcp_end.data_received(chunk)
        if tcp is not None and not tcp.is_closing() and not self._tcp_eof:
            tcp.resume_reading()

    def close(self) -> None:
        """Tear both sides down now (tunnel closing, deactivation)."""
        if self.tcp is not None:
            self.tcp.abort()
        if self.chan is not None:
            self.chan.close()
        self._finish()

    def _finish(self) -> None:
        if not self._done:
            self._done = True
            if self._on_done is not None:
                self._on_done(self)

    def flush_pending(self) -> None:
        pending, self.pending = self.pending, None
        if pending and self.tcp is not None:
            self.tcp.writelines(pending)

    def _both_eof(self) -> None:
        if self._tcp_eof and self._chan_eof:
            if self.tcp is not None:
                self.tcp.close()
            if self.chan is not None:
                self.chan.close()


class _TcpEnd(asyncio.Protocol):
    __slots__ = ("s",)

    def __init__(self, splice: Splice) -> None:
        self.s = splice

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        s = self.s
        if s._done:  # connector, early open: the channel ended during the dial
            transport.close()
            return
        if s.chan is not None:
            # Connector, early open: the channel was confirmed before the
            # dial; what the gateway sent meanwhile is held in the splice.
            s.attach_tcp(transport)  # type: ignore[arg-type]
            return
        # Dialled before the channel exists (connector side): hold the
        # endpoint's first bytes (an SMTP banner) until the channel is open.
        s.tcp = transport  # type: ignore[assignment]
        transport.pause_reading()  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        s = self.s
        chan = s.chan
        if chan is None:
            s.early.append(data)
            s.tcp.pause_reading()  # type: ignore[union-attr]
            return
        s.sent += len(data)
        chan.write(data)
        if s.replay is not None:
            s.keep_for_replay(data)

    def eof_received(self) -> bool:
        s = self.s
        s._tcp_eof = True
        if s.chan is not None:
            s.chan.write_eof()
            s._both_eof()
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        s = self.s
        if s.chan is not None:
            s.chan.close()
        s._finish()

    def pause_writing(self) -> None:
        self.s.chan.pause_reading()

    def resume_writing(self) -> None:
        self.s.chan.resume_reading()


class _ChanEnd:
    """SSH session interface (duck-typed; net/ssh only calls these)."""

    __slots__ = ("s",)

    def __init__(self, splice: Splice) -> None:
        self.s = splice

    def connection_made(self, chan: Any) -> None:
        s = self.s
        s.chan = chan
        if s.tcp is not None and s.tcp.get_protocol() is s.tcp_end:
            s._channel_ready()
            if s._tcp_eof:
                chan.write_eof()

    def session_started(self) -> None:
        # net/ssh calls this right after connection_made, for both directions.
        # On the gateway the app's TCP end is attached only after the open
        # completes (attach_tcp), and data sent right after the confirmation
        # (an SMTP banner) may already be buffered: keep it in net/ssh until
        # attach_tcp resumes reading, instead of delivering it to no one.
        if self.s.tcp is None:
            self.s.chan.pause_reading()
        else:
            self.s.chan.resume_reading()

    def confirmed_early(self) -> None:
        # net/ssh: the connector confirmed before dialling (gateway side).
        self.s.tentative = True

    def dial_failed(self, reason: str) -> None:
        # net/ssh: the connector's dial of an early-confirmed channel failed;
        # ignored on any other channel (nothing to take back there).
        if self.s.tentative:
            self.s.settle(False, f"dial failed: {reason}")

    def data_received(self, data: bytes, datatype: Any = None) -> None:
        # net/ssh hands over one SSH packet at a time, often several from one
        # socket read; they go out in one writev at the end of this loop
        # iteration instead of one syscall each.
        s = self.s
        if s.tentative:
            s.settle(True)
        if s.tcp is None:
            s.held.append(data)
            s.chan.pause_reading()
            return
        s.received += len(data)
        pending = s.pending
        if pending is None:
            s.pending = [data]
            # All packets of one SSH read go out in one writev right after
            # it (net/ssh's batch); elsewhere at the end of this iteration.
            after = getattr(s.chan, "call_after_batch", None)
            if after is not None:
                after(s.flush_pending)
            else:
                s.loop.call_soon(s.flush_pending)
        else:
            pending.append(data)

    def eof_received(self) -> bool:
        s = self.s
        if s.tentative:
            s.settle(True)
        s.flush_pending()
        s._chan_eof = True
        if s._tcp_eof:
            # Both ways ended: closing sends the TCP FIN, no shutdown first.
            s._both_eof()
            return True
        tcp = s.tcp
        if tcp is not None and tcp.can_write_eof() and not tcp.is_closing():
            tcp.write_eof()
        return True

    def connection_lost(self, exc: BaseException | None) -> None:
        s = self.s
        if s.tentative:
            s.settle(None)
        s.flush_pending()
        if s.tcp is not None:
            s.tcp.close()
        s._finish()

    def pause_writing(self) -> None:
        if self.s.tcp is not None:
            self.s.tcp.pause_reading()

    def resume_writing(self) -> None:
        if self.s.tcp is not None:
            self.s.tcp.resume_reading()
