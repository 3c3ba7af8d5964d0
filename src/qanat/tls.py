"""TLS for both ends: contexts, live certificate reload, the development
certificate, and certificate failures worded for an operator.

The gateway builds one :class:`ssl.SSLContext` with :func:`server_context`
and keeps it for its whole life. :func:`reload_certificate` loads a new chain
into that *same* object: OpenSSL copies the certificate into each connection
when its handshake starts, so established tunnels keep the certificate they
were made with and every new handshake presents the new one. Nothing is
dropped.

The connector builds its context with :func:`client_context`: the system
trust store, or only the CA bundle given with ``--tls-ca`` (as chisel's
``--tls-ca`` does), plus an optional client certificate for gateways that
require mutual TLS. Verification is never switched off.

:func:`describe_tls_failure` turns OpenSSL's codes into a sentence that names
the problem (expired, wrong name, unknown issuer, client certificate
required) and the fix. :func:`ensure_dev_certificate` makes the self-signed
certificate ``qanat up`` and ``qanat gateway --tls-self-signed`` use when no
certificate is given.

Errors: bad files raise :class:`~qanat.errors.ConfigError` naming the option.
"""

from __future__ import annotations

import datetime
import ipaddress
import logging
import os
import socket
import ssl
from collections.abc import Iterable
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from qanat import explain
from qanat.errors import ConfigError

log = logging.getLogger("qanat.tls")

#: Validity of a new development certificate, and how long before its end a
#: new one is made instead of reusing it.
DEV_CERT_VALID_DAYS = 365
DEV_CERT_RENEW_BEFORE_DAYS = 14
DEV_CERT_FILE = "dev-cert.pem"
DEV_KEY_FILE = "dev-key.pem"


# -- connector --------------------------------------------------------------------


def client_context(
    ca_file: str | None = None, cert_file: str | None = None, key_file: str | None = None
) -> ssl.SSLContext:
    """The connector's context: verify the gateway, optionally present a certificate.

    Args:
        ca_file: PEM bundle of the authorities to trust instead of the
            system store (``--tls-ca``).
        cert_file / key_file: client certificate chain and key (``--tls-cert``,
            ``--tls-key``); the key may be inside ``cert_file``.

    Raises:
        ConfigError: a file is missing or not what the option needs.
    """
    try:
        ctx = ssl.create_default_context(cafile=ca_file)
    except FileNotFoundError:
        raise ConfigError(f"--tls-ca {ca_file}: file not found") from None
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(
            f"--tls-ca {ca_file}: not a PEM bundle of CA certificates ({_reason(exc)})"
        ) from None
    if key_file and not cert_file:
        raise ConfigError("--tls-key needs --tls-cert (the client certificate)")
    if cert_file:
        _load_chain(ctx, cert_file, key_file, "--tls-cert", "--tls-key")
    return ctx


# -- gateway ----------------------------------------------------------------------


def server_context(
    cert_file: str | os.PathLike[str],
    key_file: str | os.PathLike[str] | None,
    client_ca_file: str | os.PathLike[str] | None = None,
) -> ssl.SSLContext:
    """The gateway's context; with ``client_ca_file`` connectors must present
    a certificate issued by one of those authorities (mutual TLS).

    Raises:
        ConfigError: a file is missing, unreadable, or the key does not match.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    _load_chain(ctx, os.fspath(cert_file), _opt(key_file), "--tls-cert", "--tls-key")
    if client_ca_file is not None:
        try:
            ctx.load_verify_locations(cafile=os.fspath(client_ca_file))
        except FileNotFoundError:
            raise ConfigError(f"--tls-client-ca {client_ca_file}: file not found") from None
        except (ssl.SSLError, OSError) as exc:
            raise ConfigError(
                f"--tls-client-ca {client_ca_file}: not a PEM bundle of CA certificates "
                f"({_reason(exc)})"
            ) from None
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def reload_certificate(
    ctx: ssl.SSLContext,
    cert_file: str | os.PathLike[str],
    key_file: str | os.PathLike[str] | None,
) -> None:
    """Load a new chain into ``ctx`` itself; only new handshakes see it.

    The files are first loaded into a scratch context, so a bad pair (a key
    that does not match, a half-written file) leaves ``ctx`` untouched:
    OpenSSL would otherwise keep the new certificate without its key.

    Raises:
        ConfigError: the new files are not a usable certificate and key.
    """
    scratch = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    _load_chain(scratch, os.fspath(cert_file), _opt(key_file), "--tls-cert", "--tls-key")
    _load_chain(ctx, os.fspath(cert_file), _opt(key_file), "--tls-cert", "--tls-key")


def _opt(path: str | os.PathLike[str] | None) -> str | None:
    return None if path is None else os.fspath(path)


def _load_chain(
    ctx: ssl.SSLContext, cert_file: str, key_file: str | None, cert_flag: str, key_flag: str
) -> None:
    try:
        ctx.load_cert_chain(cert_file, key_file)
    except FileNotFoundError as exc:
        missing = exc.filename or (key_file if key_file and not Path(key_file).exists() else "")
        flag = key_flag if key_file and missing == key_file else cert_flag
        raise ConfigError(f"{flag} {missing or cert_file}: file not found") from None
    except ssl.SSLError as exc:
        reason = _reason(exc)
        if "KEY_VALUES_MISMATCH" in reason:
            raise ConfigError(
                f"{key_flag} {key_file or cert_file} is not the key of the certificate in "
                f"{cert_file}; give the matching pair"
            ) from None
        raise ConfigError(
            f"{cert_flag} {cert_file}"
            + (f" / {key_flag} {key_file}" if key_file else "")
            + f": not a PEM certificate chain and private key ({reason})"
        ) from None
    except OSError as exc:
        raise ConfigError(f"{cert_flag} {cert_file}: {exc.strerror or exc}") from None


def _reason(exc: BaseException) -> str:
    reason = getattr(exc, "reason", None)
    return str(reason or getattr(exc, "strerror", None) or exc)


# -- explaining failures ----------------------------------------------------------


def describe_tls_failure(exc: ssl.SSLError, host: str, port: int) -> str:
    """One sentence for the operator: what is wrong with TLS to ``host`` and the fix.

    The wording lives in :mod:`qanat.explain` (shared with ``qanat diagnose``).
    """
    return str(explain.tls_failure(exc, host, port))


def describe_silent_close(host: str, has_client_cert: bool) -> str:
    """See :func:`qanat.explain.silent_close`."""
    return str(explain.silent_close(host, has_client_cert))


# -- the development certificate -----------------------------------------------------


def default_dev_names() -> tuple[str, ...]:
    """Names a development certificate covers: this host and the loopback addresses."""
    names = ["localhost", "127.0.0.1", "::1"]
    hostname = socket.gethostname()
    if hostname and hostname not in names:
        names.append(hostname)
    return tuple(names)


def ensure_dev_certificate(data_dir: Path, names: Iterable[str] | None = None) -> tuple[Path, Path]:
    """Return ``(cert_path, key_path)`` of a self-signed development certificate.

    The files live in ``data_dir/tls``. An existing pair is reused while it
    covers ``names`` and has more than two weeks to live; otherwise a new
    ECDSA P-256 pair valid for a year is written (key mode 0600). Callers
    should say loudly that this certificate is for development: nothing
    trusts it until a connector is given it with ``--tls-ca``.

    Args:
        data_dir: the data directory (``qanat up`` / ``qanat gateway --data-dir``).
        names: DNS names and IP addresses the certificate must cover;
            default :func:`default_dev_names`.

    Raises:
        ConfigError: the directory or files cannot be written.
    """
    wanted = tuple(names) if names is not None else default_dev_names()
    tls_dir = Path(data_dir) / "tls"
    cert_path, key_path = tls_dir / DEV_CERT_FILE, tls_dir / DEV_KEY_FILE
    if _dev_certificate_usable(cert_path, key_path, wanted):
        return cert_path, key_path
    cert_pem, key_pem = make_self_signed(wanted, days=DEV_CERT_VALID_DAYS)
    try:
        tls_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        _write_atomic(key_path, key_pem, 0o600)
        _write_atomic(cert_path, cert_pem, 0o644)
    except OSError as exc:
        raise ConfigError(
            f"cannot write the development certificate in {tls_dir}: {exc.strerror or exc}"
        ) from None
    log.info("made a new development certificate %s for %s", cert_path, ", ".join(wanted))
    return cert_path, key_path


def _dev_certificate_usable(cert_path: Path, key_path: Path, names: tuple[str, ...]) -> bool:
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        if not key_path.is_file():
            return False
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (OSError, ValueError, x509.ExtensionNotFound):
        return False
    covered = {str(n) for n in san.get_values_for_type(x509.DNSName)}
    covered |= {str(ip) for ip in san.get_values_for_type(x509.IPAddress)}
    if not all(_canonical(n) in covered for n in names):
        return False
    remaining = cert.not_valid_after_utc - datetime.datetime.now(datetime.UTC)
    return remaining > datetime.timedelta(days=DEV_CERT_RENEW_BEFORE_DAYS)


def _canonical(name: str) -> str:
    try:
        return str(ipaddress.ip_address(name))
    except ValueError:
        return name


def make_self_signed(names: Iterable[str], *, days: int) -> tuple[bytes, bytes]:
    """A self-signed server certificate for ``names``; returns (cert PEM, key PEM)."""
    names = tuple(names)
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "qanat development (not trusted)"),
            x509.NameAttribute(NameOID.COMMON_NAME, "qanat development certificate"),
        ]
    )
    alt: list[x509.GeneralName] = []
    for name in names:
        try:
            alt.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            alt.append(x509.DNSName(name))
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(alt), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return cert_pem, key_pem


def _write_atomic(path: Path, data: bytes, mode: int) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.chmod(tmp, mode)  # whatever the umask: the certificate itself is public
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
