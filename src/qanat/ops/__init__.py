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
- Instrumentation (metrics, health, the ``/metrics`` responder, log
  throttling) is not here: it is the leaf package ``qanat.telemetry``, and
  the collectors live next to what they observe (``gateway/metrics.py``,
  ``connector/metrics.py``). TLS failures are worded once, in
  ``qanat.explain``, which ``explain`` here reuses.
- ``commands``: the argparse wiring, so ``qanat.cli`` only registers it.
"""
