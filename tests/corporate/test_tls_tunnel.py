"""TLS end to end: a verified tunnel, the certificate failures an operator
meets (each named with its fix), mutual TLS, and the gateway's certificate
reload on SIGHUP that keeps established tunnels."""

from __future__ import annotations

import asyncio
import os
import signal
import ssl
import subprocess
import sys
import time
from pathlib import Path

import pytest
import trustme
from corpfixtures import Certs
from corpnet import (
    Stage,
    active_tunnels,
    app_reaches_endpoint,
    connect_options,
    echo_roundtrip,
    echo_server,
    free_port,
    gateway_url,
    log_lines,
    run_async,
    run_connector_to_end,
    running_connector,
    running_gateway,
    seconds,
)

from qanat.errors import ConfigError
from qanat.tls import server_context
from qanat.wire.tokens import hash_token


def test_tunnel_over_tls_end_to_end(tmp_path: Path, certs: Certs) -> None:
    stage = Stage()

    async def main() -> None:
        ctx = server_context(certs.server, None)
        async with (
            running_gateway(tmp_path, stage, ssl_context=ctx) as gateway,
            echo_server() as echo_port,
        ):
            port = free_port()
            options = connect_options(
                gateway_url(gateway, stage),
                [f"R:{port}:127.0.0.1:{echo_port}"],
                stage.token,
                "--tls-ca",
                str(certs.ca_file),
            )
            async with running_connector(options) as connector:
                await app_reaches_endpoint(port)
                assert connector.stats.sessions == 1
                assert gateway_url(gateway, stage).startswith("https://")

    run_async(main())


def _refusal(tmp_path: Path, serve: Path, *flags: str, host: str = "127.0.0.1") -> None:
    """Run a connector (one retry) against a gateway serving ``serve``; it
    must give up after two attempts without a tunnel."""
    stage = Stage()

    async def main() -> None:
        async with running_gateway(tmp_path, stage, ssl_context=server_context(serve, None)) as gw:
            options = connect_options(
                gateway_url(gw, stage, host),
                [f"R:{free_port()}:127.0.0.1:9"],
                stage.token,
                "--max-retry-count",
                "1",
                *flags,
            )
            code = await run_connector_to_end(options)
            assert code == 1
            assert not active_tunnels(gw)

    run_async(main())


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("unknown-issuer", "issued by an authority this connector does not trust"),
        ("expired", "has expired"),
        ("wrong-name", "is for another name"),
    ],
)
def test_certificate_problems_are_named_with_the_fix(
    tmp_path: Path, certs: Certs, caplog: pytest.LogCaptureFixture, case: str, expected: str
) -> None:
    serve, flags, host = certs.server, ["--tls-ca", str(certs.ca_file)], "127.0.0.1"
    if case == "unknown-issuer":
        flags = ["--tls-ca", str(certs.other_ca_file)]
        fix = "--tls-ca"
    elif case == "expired":
        serve = certs.expired
        fix = "renew"
    else:
        serve = certs.issue("other-name", "gateway.acme.example")
        fix, host = "subjectAltName", "localhost"
    _refusal(tmp_path, serve, *flags, host=host)
    failures = log_lines(caplog, "Connection failed")
    assert len(failures) == 2, failures  # the first attempt and one retry
    assert all(expected in line and fix in line for line in failures), failures


def test_system_trust_store_rejects_a_private_ca(
    tmp_path: Path, certs: Certs, caplog: pytest.LogCaptureFixture
) -> None:
    # Without --tls-ca the system store is used: a test CA is unknown there.
    _refusal(tmp_path, certs.server)
    assert all("does not trust" in line for line in log_lines(caplog, "Connection failed")), (
        caplog.text
    )


def test_bad_tls_files_stop_the_connector_at_start(tmp_path: Path, certs: Certs) -> None:
    stage = Stage()
    missing = tmp_path / "nope.pem"

    async def main() -> None:
        options = connect_options(
            f"https://127.0.0.1:{free_port()}/{stage.address_id}",
            ["R:9000:127.0.0.1:9"],
            stage.token,
            "--tls-ca",
            str(missing),
        )
        with pytest.raises(ConfigError, match=r"--tls-ca .*nope\.pem: file not found"):
            await run_connector_to_end(options)
        options = connect_options(
            f"https://127.0.0.1:{free_port()}/{stage.address_id}",
            ["R:9000:127.0.0.1:9"],
            stage.token,
            "--tls-cert",
            str(certs.ca_file),  # a certificate without its key
        )
        with pytest.raises(ConfigError, match="--tls-cert"):
            await run_connector_to_end(options)

    run_async(main())


def test_mutual_tls(tmp_path: Path, certs: Certs, caplog: pytest.LogCaptureFixture) -> None:
    stage = Stage()

    async def main() -> None:
        ctx = server_context(certs.server, None, client_ca_file=certs.ca_file)
        async with (
            running_gateway(tmp_path, stage, ssl_context=ctx) as gateway,
            echo_server() as echo_port,
        ):
            url = gateway_url(gateway, stage)
            # No client certificate: refused, and told what to pass.
            options = connect_options(
                url,
                [f"R:{free_port()}:127.0.0.1:{echo_port}"],
                stage.token,
                "--tls-ca",
                str(certs.ca_file),
                "--max-retry-count",
                "0",
            )
            assert await run_connector_to_end(options) == 1
            assert log_lines(caplog, "requires a client certificate"), caplog.text
            assert log_lines(caplog, "--tls-cert FILE and --tls-key FILE")
            # One from an authority the gateway does not trust: refused too.
            stranger = trustme.CA().issue_cert("connector-2.acme.example")
            stranger_file = tmp_path / "stranger.pem"
            stranger.private_key_and_cert_chain_pem.write_to_path(str(stranger_file))
            options = connect_options(
                url,
                [f"R:{free_port()}:127.0.0.1:{echo_port}"],
                stage.token,
                "--tls-ca",
                str(certs.ca_file),
                "--tls-cert",
                str(stranger_file),
                "--max-retry-count",
                "0",
            )
            assert await run_connector_to_end(options) == 1
            assert log_lines(caplog, "refused this connector's client certificate"), caplog.text
            # With the right one: the tunnel works.
            port = free_port()
            options = connect_options(
                url,
                [f"R:{port}:127.0.0.1:{echo_port}"],
                stage.token,
                "--tls-ca",
                str(certs.ca_file),
                "--tls-cert",
                str(certs.client),
            )
            async with running_connector(options):
                await app_reaches_endpoint(port)

    run_async(main())


# -- the gateway process: certificate files, SIGHUP, development certificate ----------------


def _start_gateway_process(tmp_path: Path, *flags: str) -> tuple[subprocess.Popen[str], int]:
    log = tmp_path / "gateway.log"
    out = log.open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "qanat", "gateway", "--listen", "127.0.0.1:0", *flags],
        stdout=out,
        stderr=subprocess.STDOUT,
        text=True,
    )
    out.close()
    deadline = time.monotonic() + seconds(15)
    while time.monotonic() < deadline:
        text = log.read_text()
        if "listening on https://127.0.0.1:" in text:
            port = int(text.split("listening on https://127.0.0.1:", 1)[1].split()[0])
            return proc, port
        if proc.poll() is not None:
            raise AssertionError(f"gateway exited: {text}")
        time.sleep(0.02)
    proc.kill()
    raise AssertionError(f"gateway did not start: {log.read_text()}")


def _stop(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=seconds(10))
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _stage_file(tmp_path: Path, stage: Stage) -> Path:
    path = tmp_path / "stages.toml"
    path.write_text(
        "[[stage]]\n"
        'name = "dev"\n'
        f'address_id = "{stage.address_id}"\n'
        f'token_sha256 = ["{hash_token(stage.token)}"]\n'
        'bind = "127.0.0.1"\n'
    )
    return path


def _served_certificate(port: int, ca_file: Path) -> bytes:
    ctx = ssl.create_default_context(cafile=str(ca_file))
    with (
        __import__("socket").create_connection(("127.0.0.1", port), timeout=5) as raw,
        ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return der


def _der_of(pem_file: Path) -> bytes:
    text = pem_file.read_text()
    start = text.index("-----BEGIN CERTIFICATE-----")
    end = text.index("-----END CERTIFICATE-----") + len("-----END CERTIFICATE-----")
    return ssl.PEM_cert_to_DER_cert(text[start:end])


def test_sighup_reloads_the_certificate_and_keeps_tunnels(tmp_path: Path, certs: Certs) -> None:
    stage = Stage()
    cert = tmp_path / "gw-cert.pem"
    cert.write_bytes(certs.server.read_bytes())
    proc, gw_port = _start_gateway_process(
        tmp_path,
        "--data-dir",
        str(tmp_path / "gwdata"),
        "--stage-file",
        str(_stage_file(tmp_path, stage)),
        "--tls-cert",
        str(cert),
        "--keepalive",
        "0s",
    )
    try:

        async def main() -> None:
            async with echo_server() as echo_port:
                port = free_port()
                options = connect_options(
                    f"https://127.0.0.1:{gw_port}/{stage.address_id}",
                    [f"R:{port}:127.0.0.1:{echo_port}"],
                    stage.token,
                    "--tls-ca",
                    str(certs.ca_file),
                    "--keepalive",
                    "0s",
                )
                async with running_connector(options) as connector:
                    await app_reaches_endpoint(port)
                    old = await asyncio.to_thread(_served_certificate, gw_port, certs.ca_file)
                    assert old == _der_of(certs.server)
                    renewed = certs.issue("renewed", "127.0.0.1", "localhost")
                    cert.write_bytes(renewed.read_bytes())
                    proc.send_signal(signal.SIGHUP)

                    async def new_cert_served() -> bool:
                        der = await asyncio.to_thread(_served_certificate, gw_port, certs.ca_file)
                        return der == _der_of(renewed)

                    deadline = time.monotonic() + seconds(5)
                    while not await new_cert_served():
                        assert time.monotonic() < deadline, "new certificate never served"
                        await asyncio.sleep(0.05)
                    # The established tunnel is the same one, and still carries traffic.
                    assert await echo_roundtrip(port) == b"ping through the tunnel"
                    assert connector.stats.sessions == 1
                    assert connector.stats.attempts == 1

        run_async(main(), timeout_s=30)
    finally:
        _stop(proc)
    assert "reloaded the TLS certificate" in (tmp_path / "gateway.log").read_text()


def test_self_signed_development_certificate(tmp_path: Path) -> None:
    stage = Stage()
    data_dir = tmp_path / "gwdata"
    proc, gw_port = _start_gateway_process(
        tmp_path,
        "--data-dir",
        str(data_dir),
        "--stage-file",
        str(_stage_file(tmp_path, stage)),
        "--tls-self-signed",
    )
    try:
        dev_cert = data_dir / "tls" / "dev-cert.pem"
        # The connector trusts it only when told to.
        assert _served_certificate(gw_port, dev_cert) == _der_of(dev_cert)
        assert oct(os.stat(data_dir / "tls" / "dev-key.pem").st_mode & 0o777) == "0o600"
    finally:
        _stop(proc)
    text = (tmp_path / "gateway.log").read_text()
    assert "DEVELOPMENT CERTIFICATE" in text
    assert f"--tls-ca {dev_cert}" in text
