"""Pure wire formats: no sockets, no event loop, no foreign library.

- ``remotes``: chisel's remote grammar (``R:8081:10.0.0.5:8393``) into frozen
  :class:`~qanat.wire.remotes.Remote` values and back.
- ``configmsg``: the JSON payload of the SSH global request ``config``.
- ``handshake``: names and formats of the HTTP upgrade (headers, query,
  version lines, channel type, keepalive request names).
- ``tokens``: stage tokens, their hashes and the ``sg_<uuid>`` address ids.
- ``gob``: the Go ``encoding/gob`` stream of ``udpPacket`` values that a UDP
  channel carries, as an encoder and an incremental decoder.

Everything here is tested byte for byte against ``shared/protocol`` and with
hypothesis: parse it, or raise the documented error, never anything else.
"""
