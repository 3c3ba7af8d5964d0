"""The gateway: the data plane of one or more stages.

How it works, module by module:

- ``frontdoor``: every TCP connection on the listen address starts here. The
  request head (bounded in size and time) decides: ``GET /sg_<id>`` with a
  chisel-v3 upgrade and a valid token becomes a tunnel; a plain GET of an
  address is a status probe (or a 302); ``/healthz``, ``/readyz``,
  ``/metrics`` are answered here; anything else goes to the portal when one
  runs in the same process. Connections that are not a tunnel yet are
  capped per source and in all (``pressure``; portal ones closed when idle,
  ``idle``); the token is checked first and only failed attempts are
  rate-limited, per (source, address) and globally (``tokenlimit``);
  reconnect storms per connector (``flapping``); a port inside an earlier
  stage's overlapping range is refused (``contested``).
- ``tunnel``: one connector's SSH session: the ``config`` request (validated
  remotes), keepalive pings and dead-peer removal, draining, and the
  connections riding on it.
- ``ports``: one listener per declared ``secure-gateway:<port>`` on the
  stage's bind address; the allowlist check; each app connection becomes a
  ``chisel`` channel on a tunnel chosen by ``balancer`` (round robin or
  least connections, health tiers, cool-down after repeated refusals), with
  transparent retry on the next tunnel. ``udp`` does the same for ``/udp``
  remotes with one gob-framed channel per tunnel and port.
- ``stages``: the one interface to the source of truth (a TOML file for a
  standalone gateway, the portal's database otherwise); changes (deactivation,
  renewal) act on live tunnels at once.
- ``server``: the :class:`~qanat.gateway.server.Gateway` that owns all of the
  above, its tasks, and the status snapshot.

Nothing here blocks the event loop: database access happens in the stage
source, off the loop.
"""
