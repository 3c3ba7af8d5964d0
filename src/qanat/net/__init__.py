"""Adapters, one per foreign library, each behind a small interface of ours.

- ``websocket``: websockets' sans-IO protocol objects driven by asyncio
  callbacks; after the upgrade a tunnel is presented to the SSH layer as an
  ordinary asyncio transport (binary frames in and out, no tasks, no queues).
- ``ssh``: the asyncio adapter of qanat's own SSH core (``qanat.wire.ssh``)
  with chisel's version lines, the ``config`` and ``ping`` global requests
  and the ``chisel`` channel type; callbacks only, one write per loop
  iteration for all channels of a tunnel.
- ``splice``: joins a TCP socket and an SSH channel with half-close and
  back-pressure in both directions, again purely with callbacks.

The rest of qanat only sees qanat.errors; foreign exceptions are translated
here.
"""
