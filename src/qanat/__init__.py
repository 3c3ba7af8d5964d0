"""qanat: a self-hostable private gateway.

Apps in a cloud platform reach endpoints inside private networks through
connectors that only ever dial out. The package draws the architecture::

    wire/       pure protocol code, no I/O: chisel remotes, the `config`
                message, tokens and addresses, the UDP gob codec, and our
                own sans-IO SSH-2 (wire/ssh/)
    net/        adapters driven by asyncio callbacks: WebSocket framing
                (websockets, sans-IO) and SSH (over wire/ssh), plus the byte
                pipe that splices a TCP socket to an SSH channel
    gateway/    the data plane: accepts connector tunnels, binds each
                declared port on the stage's address, turns app connections
                into SSH channels
    connector/  `qanat connect`: outbound tunnel, dials endpoints on the
                private side, reconnects with backoff
    ops/        operability: `qanat diagnose` and `qanat probe`, Prometheus
                metrics, /healthz and /readyz

Path of one app connection::

    app --TCP--> gateway listener (stage bind address, port P)
        --SSH channel "chisel" (extra data "host:port")--> WebSocket frames
        --TCP/TLS, outbound from the private side--> connector
        --TCP--> private endpoint host:port

See docs/architecture.md for the longer version.
"""

__version__ = "0.1.0"
