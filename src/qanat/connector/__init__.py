"""The connector, ``qanat connect``: the private side of a tunnel.

It only ever dials out. One run is a loop of sessions::

    address GET (302 -> tunnel URL) -> TCP or proxy (CONNECT / SOCKS5) -> TLS
      -> WebSocket upgrade with token
      -> SSH (chisel-v3) -> `config` with the remotes -> serve channels
      -> keepalive pings ... -> session ends -> back off -> again

For every ``chisel`` channel the gateway opens, the connector dials the
target named in the channel (host names resolve here, on the private side)
and splices the two; when the dial fails the channel is refused with the
reason, so the gateway can try another connector. A ``host:port/udp``
channel carries chisel's gob stream of datagrams instead (``udp.py``).

The command line is a drop-in for ``outsystemscc``: same options, same
remote grammar, same wire bytes.
"""
