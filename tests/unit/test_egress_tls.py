"""The connector's TLS context across sessions (qanat.connector.egress).

Loading the trust store costs ~17 ms of CPU per context, on the path of
every reconnect, so the context is kept while its files stay the same, and
made again, from the files as they are then, when one of them changed
(a CA bundle or client certificate rotated by replacing the file).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from qanat.connector.egress import Egress
from qanat.connector.options import ConnectOptions
from qanat.errors import ConfigError
from support.tlscerts import make_tls


def options(ca: Path) -> ConnectOptions:
    return ConnectOptions(address="https://gw.example:443/sg_x", remotes=(), tls_ca=str(ca))


def subjects(ctx: object) -> list[str]:
    return [str(c["subject"]) for c in ctx.get_ca_certs()]  # type: ignore[attr-defined]


def test_the_context_is_kept_while_the_files_stay_and_renewed_when_one_changes(
    tmp_path: Path,
) -> None:
    first = make_tls(tmp_path, "gw.example", tag="one")
    second = make_tls(tmp_path, "gw.example", tag="two")
    bundle = tmp_path / "bundle.pem"
    bundle.write_bytes(first.ca.read_bytes())
    egress = Egress(options(bundle))
    ctx = egress.tls_context()
    assert egress.tls_context() is ctx  # nothing changed: no reload
    # Rotated the usual way: a new file moved over the old one.
    staged = tmp_path / "bundle.pem.new"
    staged.write_bytes(second.ca.read_bytes())
    os.replace(staged, bundle)
    renewed = egress.tls_context()
    assert renewed is not ctx
    assert renewed.get_ca_certs() != ctx.get_ca_certs()
    assert egress.tls_context() is renewed


def test_a_bundle_that_went_away_is_said_at_the_next_session(tmp_path: Path) -> None:
    files = make_tls(tmp_path, "gw.example")
    bundle = tmp_path / "bundle.pem"
    bundle.write_bytes(files.ca.read_bytes())
    egress = Egress(options(bundle))
    bundle.unlink()
    with pytest.raises(ConfigError, match="file not found"):
        egress.tls_context()
