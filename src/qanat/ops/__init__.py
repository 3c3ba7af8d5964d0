"""Operability: what an operator runs, scrapes and reads when something is wrong.

The VPN folklore (ping, traceroute, telnet, nslookup) is replaced by two
commands that walk the path a byte takes and say what to fix::

    qanat diagnose  (connector side)   dns -> tcp [-> proxy] -> tls -> address GET
                                        -> WebSocket upgrade -> token -> ssh
                                        -> config -> every endpoint, privately
    qanat probe     (app side)         resolve secure-gateway -> connect
                                        -> exchange (HTTP GET, bytes, or wait)

Both produce a :class:`~qanat.ops.report.Report`: one line per step with
pass/fail and time, and on failure the likely cause and the fix; ``--json``
prints the same as ``{"ok", "steps": [{name, ok, ms, detail, fix}], ...}``.

Modules:

- ``report``: step results, human (coloured on a terminal) and JSON output.
- ``diagnose`` / ``probe``: the two commands; ``endpoints`` the private-side
  endpoint checks; ``explain`` what each failure most likely means and the
  fix (pure, all wording in one place); ``httphead`` the tiny HTTP
  response-head parser they share (pure).
- (instrumentation lives in ``qanat.telemetry``; the collectors next to what
  (gateway status, connector statistics); only true events (token failures,
  dead peers, channel-open latency) are counted where they happen, by one
  call into this module.
- ``health``: readiness checks (``/readyz``) with a hook for the portal's
  database; ``httpd`` serves ``/metrics``, ``/healthz`` and ``/readyz`` on
  the gateway's front door and on the connector's ``--metrics`` address.
- ``commands``: the argparse wiring, so ``qanat.cli`` only registers it.
"""
