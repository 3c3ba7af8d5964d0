"""The gateway: the data plane of one or more stages.

How it works, module by module (the picture is in docs/architecture.md):

- ``serve``: one assembly for every command that runs a gateway (``qanat
  gateway``, ``--database-url``, ``qanat up``): :class:`GatewayService` (the
  gateway, its stage source, its parts) and :func:`serve_gateway` (signals:
  SIGHUP reloads certificate and stages, SIGUSR2 logs the status, SIGTERM
  stops in stages).
- ``server``: the :class:`~qanat.gateway.server.Gateway`, the owner. It
  builds one frozen :class:`~qanat.gateway.context.GatewayContext`
  (``context``: settings, task owner, stage source, host key, limiters,
  event counters) and hands that, never itself, to the parts; tunnels report
  back through the ``TunnelHost`` protocol. ``settings``: the frozen,
  self-validating tuning.
- ``frontdoor``: every TCP connection on the listen address starts here. The
  request head (bounded in size and time) decides: ``GET /sg_<id>`` with an
  upgrade goes to ``admission.admit()``, a pure decision (subprotocol, token,
  failed attempts rate-limited per (source, address) and globally by
  ``tokenlimit``, connector id, reconnect storms from ``flapping``) tested as
  a table; a plain GET of an address is a status probe (or a 302);
  ``/healthz``, ``/readyz``, ``/metrics`` go to ``qanat.telemetry.httpd``;
  anything else to the portal when one runs in the same process. Connections
  that are not a tunnel yet are capped per source and in all (``pressure``;
  portal ones closed when idle, ``idle``); a port inside an earlier stage's
  overlapping range is refused (``contested``).
- ``tunnel``: one connector's SSH session, built complete (it starts its SSH
  server): the ``config`` request (validated remotes), keepalive pings and
  dead-peer removal, draining, ``describe@qanat``, the connections riding on it.
- ``ports``: one port per declared ``secure-gateway:<port>`` on the stage's
  bind address, TCP (``TcpPort``) and UDP (``udp.UdpPort``) bound by one path
  (``PortTable.bind``); the ``allowlist`` check; each app connection becomes
  a ``chisel`` channel on a tunnel chosen by ``balancer`` (round robin or
  least connections, health tiers, cool-down after repeated refusals), with
  retry on the next tunnel and a hedged second open (``hedge``) when the
  first connector is slow. UDP flows pick their tunnel from the same pool.
- ``status`` / ``metrics``: frozen snapshots of all of the above and the
  collector that turns one into metric families.
- ``stages``: the one interface to the source of truth (a TOML file for a
  standalone gateway, the portal's database otherwise); changes (deactivation,
  renewal, allowlists) act on live tunnels and ports at once.

Nothing here blocks the event loop: database access happens in the stage
source and the database part, off the loop.
"""
