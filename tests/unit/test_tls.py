"""qanat.tls: messages, the development certificate, safe reloads, file errors."""

from __future__ import annotations

import contextlib
import datetime
import os
import ssl
from pathlib import Path

import pytest
import trustme
from cryptography import x509

from qanat.errors import ConfigError
from qanat.tls import (
    DEV_CERT_FILE,
    client_context,
    describe_silent_close,
    describe_tls_failure,
    ensure_dev_certificate,
    make_self_signed,
    reload_certificate,
    server_context,
)


def _verify_error(code: int, message: str) -> ssl.SSLCertVerificationError:
    exc = ssl.SSLCertVerificationError(1, f"certificate verify failed: {message}")
    exc.verify_code = code
    exc.verify_message = message
    return exc


def _ssl_error(reason: str) -> ssl.SSLError:
    exc = ssl.SSLError(1, f"[SSL: {reason}] {reason.lower()}")
    exc.reason = reason
    return exc


@pytest.mark.parametrize(
    ("exc", "words"),
    [
        (_verify_error(10, "certificate has expired"), ["has expired", "renew", "clock"]),
        (_verify_error(9, "certificate is not yet valid"), ["not valid yet", "clock"]),
        (_verify_error(62, "Hostname mismatch"), ["another name", "subjectAltName"]),
        (_verify_error(64, "IP address mismatch"), ["another name", "subjectAltName"]),
        (
            _verify_error(20, "unable to get local issuer certificate"),
            ["does not trust", "--tls-ca"],
        ),
        (_verify_error(18, "self-signed certificate"), ["does not trust", "--tls-ca"]),
        (
            _verify_error(19, "self-signed certificate in chain"),
            ["does not trust", "TLS-inspecting"],
        ),
        (_verify_error(23, "certificate revoked"), ["rejected", "certificate revoked"]),
        (
            _ssl_error("TLSV13_ALERT_CERTIFICATE_REQUIRED"),
            ["requires a client certificate", "--tls-cert"],
        ),
        (_ssl_error("TLSV1_ALERT_UNKNOWN_CA"), ["refused this connector's client certificate"]),
        (_ssl_error("WRONG_VERSION_NUMBER"), ["does not speak TLS", "http://"]),
        (_ssl_error("SOMETHING_ELSE"), ["TLS handshake with gw.example.com:443 failed"]),
    ],
)
def test_failures_name_the_problem_and_the_fix(exc: ssl.SSLError, words: list[str]) -> None:
    text = describe_tls_failure(exc, "gw.example.com", 443)
    for word in words:
        assert word in text, text


def test_silent_close() -> None:
    assert "--tls-cert FILE and --tls-key FILE" in describe_silent_close("gw", False)
    assert "refused this connector's client certificate" in describe_silent_close("gw", True)


def _names(cert_path: Path) -> set[str]:
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return {str(v) for v in san.get_values_for_type(x509.DNSName)} | {
        str(v) for v in san.get_values_for_type(x509.IPAddress)
    }


def test_dev_certificate_is_made_once_and_reused(tmp_path: Path) -> None:
    cert, key = ensure_dev_certificate(tmp_path)
    assert cert == tmp_path / "tls" / DEV_CERT_FILE
    assert {"localhost", "127.0.0.1", "::1"} <= _names(cert)
    assert os.stat(key).st_mode & 0o777 == 0o600
    first = cert.read_bytes()
    assert ensure_dev_certificate(tmp_path) == (cert, key)
    assert cert.read_bytes() == first
    # A name it lacks makes a new one.
    ensure_dev_certificate(tmp_path, ["localhost", "gw.test"])
    assert cert.read_bytes() != first
    assert _names(cert) == {"localhost", "gw.test"}


def test_dev_certificate_close_to_expiry_is_replaced(tmp_path: Path) -> None:
    cert, key = ensure_dev_certificate(tmp_path, ["localhost"])
    old_pem, old_key = make_self_signed(["localhost"], days=3)
    cert.write_bytes(old_pem)
    key.write_bytes(old_key)
    ensure_dev_certificate(tmp_path, ["localhost"])
    renewed = x509.load_pem_x509_certificate(cert.read_bytes())
    left = renewed.not_valid_after_utc - datetime.datetime.now(datetime.UTC)
    assert left > datetime.timedelta(days=300)


def test_dev_certificate_verifies_as_its_own_authority(tmp_path: Path) -> None:
    cert, key = ensure_dev_certificate(tmp_path)
    server = server_context(cert, key)
    client = client_context(str(cert))
    client.verify_flags |= ssl.VERIFY_X509_STRICT
    assert _handshake(server, client, "localhost") == cert.read_bytes()


def _handshake(server: ssl.SSLContext, client: ssl.SSLContext, name: str) -> bytes:
    """An in-memory handshake; returns the PEM of the certificate the server showed."""
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    c = client.wrap_bio(c_in, c_out, server_hostname=name)
    s = server.wrap_bio(s_in, s_out, server_side=True)
    for _ in range(10):
        for side in (c, s):
            with contextlib.suppress(ssl.SSLWantReadError):
                side.do_handshake()
        s_in.write(c_out.read())
        c_in.write(s_out.read())
    der = c.getpeercert(binary_form=True)
    assert der is not None
    return ssl.DER_cert_to_PEM_cert(der).encode()


def _pem(text: str) -> bytes:
    return ssl.DER_cert_to_PEM_cert(ssl.PEM_cert_to_DER_cert(text)).encode()


def test_reload_swaps_the_certificate_in_place_and_survives_bad_files(tmp_path: Path) -> None:
    ca = trustme.CA()
    first, second = ca.issue_cert("gw.test"), ca.issue_cert("gw.test")
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    first.cert_chain_pems[0].write_to_path(str(cert_file))
    first.private_key_pem.write_to_path(str(key_file))
    server = server_context(cert_file, key_file)
    client = ssl.create_default_context()
    ca.configure_trust(client)
    assert _handshake(server, client, "gw.test") == _pem(first.cert_chain_pems[0].bytes().decode())

    # A certificate whose key is not the one in key.pem: refused, old one kept.
    second.cert_chain_pems[0].write_to_path(str(cert_file))
    with pytest.raises(ConfigError, match="is not the key of the certificate"):
        reload_certificate(server, cert_file, key_file)
    assert _handshake(server, client, "gw.test") == _pem(first.cert_chain_pems[0].bytes().decode())

    second.private_key_pem.write_to_path(str(key_file))
    reload_certificate(server, cert_file, key_file)
    assert _handshake(server, client, "gw.test") == _pem(second.cert_chain_pems[0].bytes().decode())


def test_file_errors_name_the_option(tmp_path: Path) -> None:
    missing = str(tmp_path / "missing.pem")
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    with pytest.raises(ConfigError, match=r"--tls-ca .*missing\.pem: file not found"):
        client_context(missing)
    with pytest.raises(ConfigError, match=r"--tls-ca .*junk\.pem: not a PEM bundle"):
        client_context(str(junk))
    with pytest.raises(ConfigError, match=r"--tls-key needs --tls-cert"):
        client_context(None, None, str(junk))
    with pytest.raises(ConfigError, match=r"--tls-cert .*missing\.pem: file not found"):
        server_context(missing, None)
    with pytest.raises(ConfigError, match=r"--tls-cert .*junk\.pem"):
        server_context(junk, None)
    cert, key = ensure_dev_certificate(tmp_path)
    with pytest.raises(ConfigError, match=r"--tls-client-ca .*junk\.pem: not a PEM bundle"):
        server_context(cert, key, junk)
