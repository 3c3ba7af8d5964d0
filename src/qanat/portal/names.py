"""Validation of what people type into the portal (pure).

Each function returns the normalised value or raises
:class:`~qanat.errors.InvalidInput` with a message that says what is
accepted. Limits match the column sizes in ``qanat.store.models``.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable

from qanat.errors import InvalidInput
from qanat.portal.passwords import MAX_PASSWORD_CHARS
from qanat.store import Role

MIN_PASSWORD_CHARS = 10
MAX_SOURCE_CHARS = 64

_ORG = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\Z")
_STAGE = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9 ._-]{0,62}[A-Za-z0-9])?\Z")
_USER = re.compile(r"[a-z0-9][a-z0-9._@+-]{0,63}\Z")
_PRINTABLE = re.compile(r"[\x21-\x7e]+\Z")


def org_name(text: str) -> str:
    """An organisation name: lower-case letters, digits and inner hyphens, <= 63."""
    name = text.strip().lower()
    if not _ORG.match(name):
        raise InvalidInput(
            f"organisation name {text!r} is not valid: use 1-63 lower-case letters,"
            " digits and hyphens, starting and ending with a letter or digit (e.g. 'acme')"
        )
    return name


def stage_name(text: str) -> str:
    """A stage name: letters, digits, space, '.', '_', '-', <= 64, as typed."""
    name = " ".join(text.split())
    if not _STAGE.match(name):
        raise InvalidInput(
            f"stage name {text!r} is not valid: use 1-64 letters, digits, spaces, '.',"
            " '_' or '-', starting and ending with a letter or digit (e.g. 'Staging')"
        )
    return name


def username(text: str) -> str:
    """A login name (an e-mail address works), case-insensitive, <= 64."""
    name = text.strip().lower()
    if not _USER.match(name):
        raise InvalidInput(
            f"username {text!r} is not valid: use 1-64 letters, digits, '.', '_', '@',"
            " '+' or '-', starting with a letter or digit"
        )
    return name


def new_password(text: str) -> str:
    """A password someone chooses: 10 to 1024 characters, kept exactly."""
    if not MIN_PASSWORD_CHARS <= len(text) <= MAX_PASSWORD_CHARS:
        raise InvalidInput(
            f"password must have {MIN_PASSWORD_CHARS} to {MAX_PASSWORD_CHARS} characters;"
            " a passphrase of a few words works well"
        )
    return text


def label(text: str, what: str) -> str:
    """A short free-form name (API key names)."""
    name = " ".join(text.split())
    if not 1 <= len(name) <= 64 or not name.isprintable():
        raise InvalidInput(f"{what} {text!r} must be 1-64 printable characters")
    return name


def role(text: str | Role) -> Role:
    try:
        return Role(text)
    except ValueError:
        valid = ", ".join(r.value for r in Role)
        raise InvalidInput(f"role {text!r} does not exist; use one of: {valid}") from None


def source_address(text: str) -> str:
    """Where a request came from: an IP address or a short word like 'cli'."""
    value = text.strip()
    if not 1 <= len(value) <= MAX_SOURCE_CHARS or not _PRINTABLE.match(value):
        raise InvalidInput(
            f"source address {text!r} must be an IP address or a short word such as 'cli'"
        )
    return value


def bind_host(text: str) -> str:
    try:
        return str(ipaddress.ip_address(text.strip()))
    except ValueError:
        raise InvalidInput(
            f"bind address {text!r} is not an IP address; use e.g. 127.0.0.1 or 10.1.2.3"
        ) from None


def bind_pool(text: str) -> str:
    """A network (``10.20.0.0/16``) or one address new stages' bind addresses come from."""
    try:
        return str(ipaddress.ip_network(text.strip(), strict=False))
    except ValueError:
        raise InvalidInput(
            f"bind address pool {text!r} is not an address or a network; use e.g."
            " 127.0.0.0/8 or 10.20.0.0/16 (each stage gets one address of it)"
        ) from None


def port_range(port_min: int, port_max: int) -> tuple[int, int]:
    if not 1 <= port_min <= port_max <= 65535:
        raise InvalidInput(
            f"port range {port_min}-{port_max} is not valid: need 1 <= min <= max <= 65535"
        )
    return port_min, port_max


def cidrs(items: Iterable[str]) -> tuple[str, ...]:
    """App source networks, normalised (``10.0.0.7/8`` becomes ``10.0.0.0/8``)."""
    result: list[str] = []
    for item in items:
        try:
            network = str(ipaddress.ip_network(item.strip(), strict=False))
        except ValueError:
            raise InvalidInput(
                f"allowed source {item!r} is not a network; use CIDR notation like"
                " 10.0.0.0/8 or 2001:db8::/32"
            ) from None
        if network not in result:
            result.append(network)
    if len(result) > 100:
        raise InvalidInput("at most 100 allowed source networks per gateway; merge some")
    return tuple(result)
