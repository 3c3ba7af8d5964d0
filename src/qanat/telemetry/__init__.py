"""Instrumentation: counters, health checks, the operations HTTP routes, log throttling.

A leaf: nothing here imports the rest of qanat. What a component wants to
show it hands over as values (``Family`` rows built from its own typed
snapshot, readiness ``Check`` callables), so the dependency points one
way: gateway and connector -> telemetry, never back.

- ``counters``: the only importer of prometheus_client. ``Family`` (what a
  collector yields), ``Exposition`` (what ``/metrics`` renders),
  ``GatewayEvents`` (counted where they happen: token failures, dead peers,
  channel-open latency, hedged opens).
- ``health``: named readiness checks with a per-check time bound.
- ``httpd``: one tiny HTTP/1.1 responder for ``/metrics``, ``/healthz`` and
  ``/readyz``, on the gateway's front door or the connector's own address.
- ``throttle``: at most N log lines per window per key, with the count of
  the ones held back; the clock is injected.
"""
