"""The SSH core in memory: every state violation is a documented error.

Two cores talk through lists of bytes; tests then break one side's stream
on purpose. Hypothesis feeds the decoder, the key exchange and the channel
layer arbitrary input: the result is success or one of the documented
errors (SshRemoteError, SshLocalError), never anything else.
"""

from __future__ import annotations

import contextlib
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qanat.wire.ssh import (
    BaseHandler,
    EcdsaKey,
    SshConnection,
    SshDisconnected,
    SshLimits,
    SshLocalError,
    SshRemoteError,
)
from qanat.wire.ssh.ciphers import PacketCipher
from qanat.wire.ssh.codec import string, u32

KEY = EcdsaKey.generate()


class Recorder(BaseHandler):
    def __init__(self) -> None:
        self.events: list[tuple[object, ...]] = []

    def ssh_ready(self) -> None:
        self.events.append(("ready",))

    def ssh_channel_open(self, chan_id: int, kind: bytes, extra: bytes) -> None:
        self.events.append(("open", chan_id, kind, extra))
        self.conn.accept_channel(chan_id, 65536, 32768)

    def ssh_channel_open_result(self, chan_id: int, ok: bool, code: int, text: str) -> None:
        self.events.append(("result", chan_id, ok))

    def ssh_channel_data(self, chan_id: int, data: bytes) -> None:
        self.events.append(("data", chan_id, data))

    def ssh_channel_eof(self, chan_id: int) -> None:
        self.events.append(("eof", chan_id))

    def ssh_channel_closed(self, chan_id: int) -> None:
        self.events.append(("closed", chan_id))


def pair(**server_kwargs: object) -> tuple[SshConnection, SshConnection, Recorder, Recorder]:
    hc, hs = Recorder(), Recorder()
    c = SshConnection(client=True, handler=hc, version=b"SSH-chisel-v3-client")
    s = SshConnection(
        client=False, handler=hs, version=b"SSH-chisel-v3-server", host_key=KEY, **server_kwargs
    )
    hc.conn, hs.conn = c, s
    return c, s, hc, hs


def pump(c: SshConnection, s: SshConnection, rounds: int = 30) -> None:
    for _ in range(rounds):
        a, b = c.data_to_send(), s.data_to_send()
        if not a and not b:
            return
        s.receive_data(b"".join(a))
        c.receive_data(b"".join(b))


def ready_pair() -> tuple[SshConnection, SshConnection, Recorder, Recorder]:
    c, s, hc, hs = pair()
    pump(c, s)
    assert ("ready",) in hc.events
    assert ("ready",) in hs.events
    return c, s, hc, hs


def plain_packet(payload: bytes) -> bytes:
    out: list[bytes] = []
    PacketCipher().seal(0, out, payload)
    return b"".join(out)


def test_handshake_channel_and_strict_kex_in_memory():
    c, s, hc, hs = ready_pair()
    assert c.strict
    assert s.strict
    chan = s.open_channel(b"chisel", b"10.0.0.5:8393", 65536, 32768)
    pump(c, s)
    assert ("result", chan, True) in hs.events
    s.send_data(chan, b"x" * 200_000)  # more than the window: held, then sent
    pump(c, s)
    got = b"".join(e[2] for e in hc.events if e[0] == "data")  # type: ignore[misc]
    assert got == b"x" * 200_000


def test_message_before_newkeys_is_fatal():
    c, s, _, _ = pair()
    first = s.data_to_send()  # version line only
    c.receive_data(b"".join(first))
    c.data_to_send()
    # The server's KEXINIT went out; now a channel message before NEWKEYS.
    s_out = b"".join(s.data_to_send())
    c.receive_data(s_out)
    with pytest.raises(SshRemoteError, match=r"before NEWKEYS|key exchange"):
        c.receive_data(plain_packet(bytes((94,)) + u32(0) + string(b"early")))
    assert c.closed


def test_unexpected_kexinit_first_under_strict_kex_is_fatal():
    # A packet before KEXINIT (an IGNORE, as in the Terrapin attack) with
    # strict kex offered by both: the KEXINIT is no longer the first packet.
    c, s, _, _ = pair()
    c.receive_data(b"".join(s.data_to_send()))
    s.receive_data(b"".join(c.data_to_send()))
    kexinit = b"".join(s.data_to_send())
    with pytest.raises(SshRemoteError, match="strict key exchange"):
        c.receive_data(plain_packet(b"\x02" + string(b"")) + kexinit)


def test_ignore_during_initial_strict_kex_is_fatal():
    c, s, _, _ = pair()
    c.receive_data(b"".join(s.data_to_send()))
    s.receive_data(b"".join(c.data_to_send()))
    c.receive_data(b"".join(s.data_to_send()))  # version + KEXINIT
    with pytest.raises(SshRemoteError, match="strict key exchange"):
        c.receive_data(plain_packet(b"\x02" + string(b"")))


def test_second_kexinit_during_a_key_exchange_is_fatal():
    c, s, _, _ = pair()
    c.receive_data(b"".join(s.data_to_send()))
    s.receive_data(b"".join(c.data_to_send()))
    kexinit_stream = b"".join(s.data_to_send())
    c.receive_data(kexinit_stream)
    kexinit = (
        kexinit_stream[kexinit_stream.index(b"\r\n") + 2 :]
        if b"\r\n" in kexinit_stream
        else kexinit_stream
    )
    with pytest.raises(SshRemoteError, match=r"second KEXINIT|strict"):
        c.receive_data(kexinit)


def test_sequence_number_wrap_during_initial_kex_is_fatal():
    c, s, _, _ = pair()
    c.receive_data(b"".join(s.data_to_send()))
    s.receive_data(b"".join(c.data_to_send()))
    c._rseq = 0xFFFFFFFF  # as if 2**32 - 1 packets had come before the KEXINIT
    with pytest.raises(SshRemoteError, match="sequence number wrapped"):
        c.receive_data(b"".join(s.data_to_send()))


def test_oversized_packet_is_fatal_before_it_is_buffered():
    c, s, _, _ = pair()
    c.receive_data(b"".join(s.data_to_send()))
    with pytest.raises(SshRemoteError, match="over the limit"):
        c.receive_data(struct.pack(">I", 10_000_000) + b"\x04")
    assert len(c._inbuf) < 100


def test_limit_is_a_constructor_argument():
    hc = Recorder()
    c = SshConnection(
        client=True, handler=hc, version=b"SSH-2.0-x", limits=SshLimits(max_packet_bytes=1000)
    )
    c.receive_data(b"SSH-2.0-peer\r\n")
    with pytest.raises(SshRemoteError, match="over the limit of 1000"):
        c.receive_data(struct.pack(">I", 1004) + b"\x04")


def test_bad_mac_is_fatal_and_names_the_cipher():
    c, s, _, _ = ready_pair()
    s.global_request("ping")
    wire = bytearray(b"".join(s.data_to_send()))
    wire[-1] ^= 1
    with pytest.raises(SshRemoteError, match="MAC") as info:
        c.receive_data(bytes(wire))
    assert info.value.code == 5


def test_peer_disconnect_is_its_own_error_with_code_and_text():
    c, s, _, _ = ready_pair()
    s.disconnect(11, "going away")
    with pytest.raises(SshDisconnected, match="going away") as info:
        c.receive_data(b"".join(s.data_to_send()))
    assert info.value.code == 11


def test_not_an_ssh_stream_is_a_clear_error():
    hc = Recorder()
    c = SshConnection(client=False, handler=hc, version=b"SSH-2.0-x", host_key=KEY)
    with pytest.raises(SshRemoteError, match="not an SSH version line"):
        c.receive_data(b"GET / HTTP/1.1\r\n")


def test_local_misuse_is_a_local_error():
    c, _s, _, _ = ready_pair()
    with pytest.raises(SshLocalError):
        c.send_data(42, b"no such channel")
    with pytest.raises(SshLocalError):
        c.reply_global(True)
    with pytest.raises(SshLocalError):
        SshConnection(client=False, handler=Recorder(), version=b"SSH-2.0-x")
    with pytest.raises(SshLocalError):
        SshConnection(
            client=True, handler=Recorder(), version=b"SSH-2.0-x", ciphers=("aes128-ctr",)
        )


def test_data_beyond_the_window_is_fatal():
    c, s, _hc, _hs = ready_pair()
    chan = s.open_channel(b"chisel", b"x:1", 65536, 32768)
    pump(c, s)
    remote = c._channels[0].remote
    s.pause_channel(chan)  # no WINDOW_ADJUST from here on
    c._channels[0].send_window = 10**9  # a peer that ignores our window
    c._channels[0].send_max = 10**6
    for _ in range(3):
        c.send_data(0, b"y" * 32768)
    with pytest.raises(SshRemoteError, match="window"):
        s.receive_data(b"".join(c.data_to_send()))
    assert remote == chan


def test_rekey_in_memory_keeps_data_flowing():
    c, s, hc, _ = ready_pair()
    chan = s.open_channel(b"chisel", b"x:1", 65536, 32768)
    pump(c, s)
    c.start_rekey()
    s.send_data(chan, b"during")
    pump(c, s)
    assert c.kex_count == 2
    assert ("data", 0, b"during") in hc.events


# -- fuzzing ------------------------------------------------------------------

DOCUMENTED = (SshRemoteError, SshLocalError)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=2000))
def test_fuzz_version_and_packet_decoder(data):
    c = SshConnection(client=True, handler=Recorder(), version=b"SSH-2.0-x")
    with contextlib.suppress(DOCUMENTED):
        c.receive_data(b"SSH-2.0-fuzz\r\n" + data)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.integers(1, 255), st.binary(max_size=200)), max_size=8))
def test_fuzz_kex_state_machine_with_wellformed_packets(messages):
    c, s, _, _ = pair()
    c.receive_data(b"".join(s.data_to_send()))
    try:
        for msg, body in messages:
            c.receive_data(plain_packet(bytes((msg,)) + body))
    except DOCUMENTED:
        pass


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.integers(50, 110), st.binary(max_size=64)), max_size=10))
def test_fuzz_connection_layer_after_authentication(messages):
    c, s, _, _ = ready_pair()
    s.open_channel(b"chisel", b"x:1", 65536, 32768)
    pump(c, s)
    try:
        for msg, body in messages:
            s.send_payload(bytes((msg,)) + body)
            c.receive_data(b"".join(s.data_to_send()))
    except DOCUMENTED:
        pass


def test_a_close_that_only_frees_the_channel_may_wait_but_an_eof_may_not():
    c, s, hc, hs = ready_pair()
    chan = s.open_channel(b"chisel", b"x:1", 65536, 32768)
    pump(c, s)
    (client_chan,) = [e[1] for e in hc.events if e[0] == "open"]
    calls: list[str] = []
    c.on_output = lambda: calls.append("now")
    c.on_lazy_output = lambda: calls.append("lazy")

    # The server ends its side: the client's EOF towards the app side is
    # something a peer waits for, so it is urgent.
    s.send_eof(chan)
    pump(c, s)
    c.send_eof(client_chan)
    assert calls == ["now"]
    s.receive_data(b"".join(c.data_to_send()))
    assert ("eof", chan) in hs.events

    # EOF both ways, then the server's CLOSE: the client's answering CLOSE
    # frees the channel only, so it may wait for other output.
    calls.clear()
    s.close_channel(chan)
    c.receive_data(b"".join(s.data_to_send()))
    assert ("closed", client_chan) in hc.events
    assert calls == ["lazy"]
    waiting = c.data_to_send()
    assert waiting, "the answering CLOSE is queued, not dropped"

    # Urgent output queued after a lazy one still asks for a write.
    calls.clear()
    other = c.open_channel(b"chisel", b"y:2", 65536, 32768)
    assert other != client_chan
    assert calls == ["now"]
    s.receive_data(b"".join(waiting) + b"".join(c.data_to_send()))
    assert ("closed", chan) in hs.events


class RequestRecorder(Recorder):
    """Confirms with qanat's early-open marker and records channel requests."""

    def ssh_channel_open(self, chan_id: int, kind: bytes, extra: bytes) -> None:
        self.events.append(("open", chan_id, kind, extra))
        self.conn.accept_channel(chan_id, 65536, 32768, b"early-open@qanat")

    def ssh_channel_open_result(self, chan_id: int, ok: bool, code: int, text: str) -> None:
        self.events.append(("result", chan_id, ok, text))

    def ssh_channel_request(self, chan_id: int, name: str, payload: bytes) -> None:
        self.events.append(("request", chan_id, name, payload))


def test_confirmation_extra_data_and_channel_requests_reach_the_other_side():
    hc, hs = RequestRecorder(), RequestRecorder()
    c = SshConnection(client=True, handler=hc, version=b"SSH-chisel-v3-client")
    s = SshConnection(client=False, handler=hs, version=b"SSH-chisel-v3-server", host_key=KEY)
    hc.conn, hs.conn = c, s
    pump(c, s)
    chan = s.open_channel(b"chisel", b"10.0.0.5:8393", 65536, 32768)
    pump(c, s)
    assert ("result", chan, True, "early-open@qanat") in hs.events
    (peer_chan,) = [e[1] for e in hc.events if e[0] == "open"]
    c.send_channel_request(peer_chan, "dial-failed@qanat", string(b"dial 10.0.0.5:8393: refused"))
    pump(c, s)
    assert ("request", chan, "dial-failed@qanat", string(b"dial 10.0.0.5:8393: refused")) in (
        hs.events
    )
    # A request after CLOSE is not sent: the channel is closed for sending.
    c.close_channel(peer_chan)
    with pytest.raises(SshLocalError, match="closed for sending"):
        c.send_channel_request(peer_chan, "dial-failed@qanat", b"")


def test_a_channel_request_wanting_a_reply_is_still_reported():
    c, s, hc, hs = ready_pair()
    chan = s.open_channel(b"chisel", b"10.0.0.5:8393", 65536, 32768)
    pump(c, s)
    (peer_chan,) = [e[1] for e in hc.events if e[0] == "open"]
    got: list[tuple[int, str, bytes]] = []
    hs.ssh_channel_request = lambda *event: got.append(event)  # type: ignore[method-assign,assignment]
    recipient = c._channels[peer_chan].remote  # the server's id of the channel
    c.send_payload(bytes((98,)) + u32(recipient) + string(b"x@y") + b"\x01" + b"rest")
    pump(c, s)
    assert got == [(chan, "x@y", b"rest")]
    assert not s.closed  # answered with CHANNEL_FAILURE, the connection goes on
