"""``--nats tls://`` and ``--nats-tls-ca/-cert/-key`` against a real nats-server.

docs/cluster.md promises TLS and mutual TLS towards NATS. Here Debian's
nats-server runs TLS-only (``--tls``), then with client verification
(``--tlsverify``), with certificates from trustme:

- a ``tls://`` URL with the CA: connected, and a message goes round;
- mutual TLS: admitted with the client certificate, not without it;
- the wrong CA: never connected, said once, with the reason.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest
import trustme

from qanat.cluster.natsbus import Bus, NatsSettings
from qanat.errors import ConfigError
from support.natsserver import running_nats
from support.timing import eventually, scaled


def files(tmp_path: Path, name: str) -> tuple[Path, Path, Path]:
    """(CA, certificate, key) of a fresh CA issuing one certificate for 127.0.0.1."""
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", common_name=name)
    ca_file, cert_file, key_file = (tmp_path / f"{name}-{p}.pem" for p in ("ca", "cert", "key"))
    ca.cert_pem.write_to_path(str(ca_file))
    cert.cert_chain_pems[0].write_to_path(str(cert_file))
    cert.private_key_pem.write_to_path(str(key_file))
    return ca_file, cert_file, key_file


def tls_url(port: int) -> str:
    return f"tls://127.0.0.1:{port}"


async def round_trip(bus: Bus, subject: str) -> bytes:
    got: asyncio.Queue[bytes] = asyncio.Queue()
    await bus.subscribe(subject, lambda _subject, data: got.put_nowait(data))
    async with asyncio.timeout(scaled(10)):
        while got.empty():
            await bus.publish(subject, b"over TLS")
            try:
                return await asyncio.wait_for(got.get(), 0.5)
            except TimeoutError:
                continue
    return got.get_nowait()


async def test_a_tls_url_with_the_ca_connects_and_carries_messages(tmp_path: Path) -> None:
    ca, cert, key = files(tmp_path, "nats")
    with running_nats("--tls", "--tlscert", str(cert), "--tlskey", str(key)) as server:
        bus = Bus(NatsSettings(url=tls_url(server.port), tls_ca_file=ca), "tls")
        await bus.start()
        try:
            await eventually(lambda: bus.up, "connected over TLS")
            assert await round_trip(bus, "qanat.test.tls") == b"over TLS"
        finally:
            await bus.close()


async def test_mutual_tls_admits_the_client_certificate_only(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="qanat.cluster")
    ca, cert, key = files(tmp_path, "nats")
    args = ("--tlsverify", "--tlscert", str(cert), "--tlskey", str(key), "--tlscacert", str(ca))
    with running_nats(*args) as server:
        url = tls_url(server.port)
        # The node's certificate comes from the same CA here (trustme's
        # certificates are good for client authentication too).
        node = Bus(
            NatsSettings(url=url, tls_ca_file=ca, tls_cert_file=cert, tls_key_file=key), "node"
        )
        anonymous = Bus(NatsSettings(url=url, tls_ca_file=ca, reconnect_wait_s=0.1), "anon")
        await node.start()
        await anonymous.start()
        try:
            await eventually(lambda: node.up, "admitted with the certificate")
            assert await round_trip(node, "qanat.test.mtls") == b"over TLS"
            await eventually(
                lambda: any("not reachable" in r.getMessage() for r in caplog.records),
                "the refusal of the node without a certificate said",
            )
            assert not anonymous.up
        finally:
            await node.close()
            await anonymous.close()


async def test_the_wrong_ca_never_connects_and_says_why_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="qanat.cluster")
    _, cert, key = files(tmp_path, "nats")
    other_ca, _, _ = files(tmp_path, "other")
    with running_nats("--tls", "--tlscert", str(cert), "--tlskey", str(key)) as server:
        bus = Bus(
            NatsSettings(url=tls_url(server.port), tls_ca_file=other_ca, reconnect_wait_s=0.05),
            "wrong-ca",
        )
        await bus.start()
        try:
            await eventually(
                lambda: any("not reachable" in r.getMessage() for r in caplog.records),
                "the failure said",
            )
            await asyncio.sleep(0.3)  # more attempts, nothing more said
            said = [r.getMessage() for r in caplog.records if "not reachable" in r.getMessage()]
            assert len(said) == 1, said
            assert "certificate" in said[0].lower(), said[0]
            assert not bus.up
        finally:
            await bus.close()


async def test_unreadable_tls_files_are_refused_at_start(tmp_path: Path) -> None:
    bus = Bus(NatsSettings(url="tls://127.0.0.1:4222", tls_ca_file=tmp_path / "missing.pem"), "x")
    with pytest.raises(ConfigError, match="--nats TLS files"):
        await bus.start()
