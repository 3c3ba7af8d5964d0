"""Where the gateway learns its stages: the one interface to the source of truth.

The gateway asks two questions on every connector handshake, synchronously and
without I/O (answers come from an in-memory view the source keeps fresh):

- which stage does the address id ``sg_<uuid>`` belong to, and is it active?
- is this token valid for that stage (or was it renewed, or is the stage
  inactive)?

and it subscribes to changes (deactivation, token renewal) to act on live
tunnels. :class:`FileStageSource` reads a TOML file (standalone gateway);
the portal's store provides a database-backed source with the same interface.
"""

from __future__ import annotations

import enum
import ipaddress
import logging
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

from qanat.errors import ConfigError
from qanat.gateway.bindcheck import bind_problem
from qanat.wire.tokens import HASH_PREFIX, is_address_id, token_matches

_log = logging.getLogger("qanat.gateway.stages")


@dataclass(frozen=True, slots=True)
class StageConfig:
    """One stage's private gateway, as the data plane needs it.

    Attributes:
        key: stable unique key of the stage (``<org>/<stage>``).
        address_id: the ``sg_<uuid>`` path of its address.
        bind_host: address the stage's endpoint ports listen on.
        port_min / port_max: range of ports connectors may declare.
        active: whether connectors may connect at all.
        token_hashes: hashes of the currently valid token (usually one).
        renewed_hashes: hashes of tokens replaced by a renewal; a connector
            presenting one is told its token was renewed.
        allow_cidrs: app sources allowed to connect to the endpoint ports; the
            field default is loopback, and sources of truth apply
            :func:`stage_allowlist` (explicit for any non-loopback bind).
    """

    key: str
    address_id: str
    bind_host: str = "127.0.0.1"
    port_min: int = 1024
    port_max: int = 65535
    active: bool = True
    token_hashes: tuple[str, ...] = ()
    renewed_hashes: tuple[str, ...] = ()
    allow_cidrs: tuple[str, ...] = ("127.0.0.0/8", "::1/128")

    def allows_port(self, port: int) -> bool:
        return self.port_min <= port <= self.port_max


class TokenVerdict(enum.Enum):
    """Outcome of a token check, mapped to HTTP answers by the front door."""

    OK = "ok"
    BAD = "bad"
    RENEWED = "renewed"
    INACTIVE = "inactive"


def check_token(stage: StageConfig, token: str) -> TokenVerdict:
    """Decide a token for ``stage``; constant time in the token's content."""
    if any(token_matches(token, h) for h in stage.token_hashes):
        return TokenVerdict.OK if stage.active else TokenVerdict.INACTIVE
    if any(token_matches(token, h) for h in stage.renewed_hashes):
        return TokenVerdict.RENEWED
    return TokenVerdict.BAD


class StageEventKind(enum.Enum):
    CHANGED = "changed"  # anything about the stage changed (active, tokens, bind, ...)
    REMOVED = "removed"


@dataclass(frozen=True, slots=True)
class StageEvent:
    kind: StageEventKind
    stage: StageConfig


StageListener = Callable[[StageEvent], None]


class StageSource(Protocol):
    """What the gateway needs from a source of truth for stages."""

    def lookup(self, address_id: str) -> StageConfig | None:
        """Return the stage owning ``address_id``, or None. Must not block."""

    def stages(self) -> list[StageConfig]:
        """All known stages."""

    def subscribe(self, listener: StageListener) -> None:
        """Call ``listener`` (in the event loop) after every change."""

    async def start(self) -> None:
        """Load the initial view and begin following changes."""

    async def close(self) -> None:
        """Stop following changes."""


@dataclass
class MemoryStageSource:
    """An in-memory source; the base of the file source and handy in tests."""

    _by_address: dict[str, StageConfig] = field(default_factory=dict)
    _listeners: list[StageListener] = field(default_factory=list)

    def lookup(self, address_id: str) -> StageConfig | None:
        return self._by_address.get(address_id)

    def stages(self) -> list[StageConfig]:
        return list(self._by_address.values())

    def subscribe(self, listener: StageListener) -> None:
        self._listeners.append(listener)

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    def put(self, stage: StageConfig) -> None:
        """Add or replace a stage and tell the subscribers."""
        self._by_address[stage.address_id] = stage
        self._emit(StageEvent(StageEventKind.CHANGED, stage))

    def update(self, address_id: str, **changes: Any) -> StageConfig:
        """Replace some fields of a stage and tell the subscribers."""
        stage = replace(self._by_address[address_id], **changes)
        self.put(stage)
        return stage

    def remove(self, address_id: str) -> None:
        stage = self._by_address.pop(address_id, None)
        if stage is not None:
            self._emit(StageEvent(StageEventKind.REMOVED, stage))

    def replace_all(self, stages: Mapping[str, StageConfig]) -> None:
        """Swap in a new view, emitting events only for what changed."""
        old = self._by_address
        self._by_address = dict(stages)
        for address_id, stage in old.items():
            if address_id not in stages:
                self._emit(StageEvent(StageEventKind.REMOVED, stage))
        for address_id, stage in stages.items():
            if old.get(address_id) != stage:
                self._emit(StageEvent(StageEventKind.CHANGED, stage))

    def _emit(self, event: StageEvent) -> None:
        for listener in list(self._listeners):
            listener(event)


LOOPBACK_ALLOW = ("127.0.0.0/8", "::1/128")


def stage_allowlist(
    where: str, bind_host: str, allow: Any, *, everyone: bool = False
) -> tuple[str, ...]:
    """Decide a stage's source allowlist; the rule a security team expects.

    - No ``allow`` given: a loopback bind (``qanat up`` on one machine) admits
      loopback sources only; any other bind is refused, because a stage on a
      real network must name its app networks explicitly. There is no
      "everyone" default.
    - A network of prefix length 0 (``0.0.0.0/0``, ``::/0``) is refused
      unless ``everyone`` (``allow_everyone = true``) says it is meant.
    - An empty list is allowed and admits nobody (a stage parked on purpose).

    Returns:
        the CIDRs, normalised (``10.77.1.5/24`` becomes ``10.77.1.0/24``).

    Raises:
        ConfigError: naming ``where`` and the fix.
    """
    if allow is None:
        if ipaddress.ip_address(bind_host).is_loopback:
            return LOOPBACK_ALLOW
        raise ConfigError(
            f"{where}: bind {bind_host} is not a loopback address, so 'allow' must list "
            f'the app networks of this stage (for example allow = ["10.0.1.0/24"]); '
            "qanat never admits every source by default"
        )
    if isinstance(allow, str) or not isinstance(allow, list):
        raise ConfigError(f'{where}: allow must be a list of CIDRs, e.g. ["10.0.1.0/24"]')
    cidrs: list[str] = []
    for cidr in allow:
        try:
            net = ipaddress.ip_network(str(cidr), strict=False)
        except ValueError:
            raise ConfigError(f"{where}: allow entry {cidr!r} is not a CIDR") from None
        if net.prefixlen == 0 and not everyone:
            raise ConfigError(
                f"{where}: allow entry {cidr!r} admits every source; list the stage's app "
                "networks instead, or set allow_everyone = true if that is really meant"
            )
        cidrs.append(str(net))
    return tuple(cidrs)


def find_stage(stages: Mapping[str, StageConfig], name: str) -> StageConfig:
    """The stage whose key is ``name``, or whose key ends in ``/<name>``.

    Raises:
        ConfigError: when none or several stages match, listing the keys.
    """
    exact = [s for s in stages.values() if s.key == name]
    found = exact or [s for s in stages.values() if s.key.rsplit("/", 1)[-1] == name]
    if len(found) == 1:
        return found[0]
    known = ", ".join(sorted(s.key for s in stages.values())) or "none"
    if not found:
        raise ConfigError(f"no stage named {name!r} (stages: {known})")
    raise ConfigError(f"stage name {name!r} is ambiguous; use the full key (stages: {known})")


def _parse_stage(index: int, raw: Any) -> StageConfig:
    where = f"stage #{index + 1}"
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a table")
    try:
        name = str(raw["name"])
        address_id = str(raw["address_id"])
    except KeyError as exc:
        raise ConfigError(f"{where}: missing {exc.args[0]!r}") from None
    where = f"stage {name!r}"
    if not is_address_id(address_id):
        raise ConfigError(f"{where}: address_id {address_id!r} is not sg_<uuid>")
    hashes = raw.get("token_sha256", [])
    if isinstance(hashes, str):
        hashes = [hashes]
    for h in hashes:
        if not (isinstance(h, str) and h.startswith(HASH_PREFIX) and len(h) == 71):
            raise ConfigError(f"{where}: token_sha256 entries look like 'sha256:<64 hex>'")
    bind_host = str(raw.get("bind", "127.0.0.1"))
    try:
        ipaddress.ip_address(bind_host)
    except ValueError:
        raise ConfigError(f"{where}: bind {bind_host!r} is not an IP address") from None
    ports = str(raw.get("ports", "1024-65535"))
    low, _, high = ports.partition("-")
    try:
        port_min, port_max = int(low), int(high or low)
    except ValueError:
        raise ConfigError(f"{where}: ports {ports!r} is not a range like 8000-8999") from None
    if not 1 <= port_min <= port_max <= 65535:
        raise ConfigError(f"{where}: ports {ports!r} outside 1-65535")
    cidrs = stage_allowlist(
        where, bind_host, raw.get("allow"), everyone=raw.get("allow_everyone") is True
    )
    return StageConfig(
        key=str(raw.get("key", name)),
        address_id=address_id,
        bind_host=bind_host,
        port_min=port_min,
        port_max=port_max,
        active=bool(raw.get("active", True)),
        token_hashes=tuple(hashes),
        renewed_hashes=tuple(raw.get("renewed_sha256", [])),
        allow_cidrs=tuple(cidrs),
    )


def load_stage_file(path: Path) -> dict[str, StageConfig]:
    """Read a stage file (TOML, ``[[stage]]`` tables).

    Raises:
        ConfigError: naming the file, the stage and the field at fault.
    """
    try:
        doc = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"stage file {path} does not exist") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"stage file {path}: {exc}") from None
    stages: dict[str, StageConfig] = {}
    for index, raw in enumerate(doc.get("stage", [])):
        try:
            stage = _parse_stage(index, raw)
        except ConfigError as exc:
            raise ConfigError(f"stage file {path}: {exc}") from None
        stages[stage.address_id] = stage
    return stages


class FileStageSource(MemoryStageSource):
    """Stages from a TOML file, re-read by :meth:`reload` (SIGHUP)."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = path

    async def start(self) -> None:
        self.replace_all(self._load())

    def reload(self) -> None:
        """Re-read the file; on error keep the current view and raise."""
        self.replace_all(self._load())

    def _load(self) -> dict[str, StageConfig]:
        stages = load_stage_file(self.path)
        for stage in stages.values():
            problem = bind_problem(stage.bind_host) if stage.active else None
            if problem is not None:
                _log.warning(
                    "stage %r: %s; its connectors will be refused until then, "
                    "other stages are unaffected",
                    stage.key,
                    problem,
                )
        return stages


# -- writing the stage file ------------------------------------------------------------


def toml_string(text: str) -> str:
    """``text`` as a TOML basic string: quoted, with ``"``, ``\\`` and control
    characters escaped, so any name reads back unchanged."""
    out = ['"']
    for char in text:
        code = ord(char)
        if char == '"':
            out.append('\\"')
        elif char == "\\":
            out.append("\\\\")
        elif code < 0x20 or code == 0x7F:
            out.append(f"\\u{code:04X}")
        else:
            out.append(char)
    out.append('"')
    return "".join(out)


def stage_entry(fields: dict[str, str | list[str]]) -> str:
    """One ``[[stage]]`` table of the stage file (strings and string arrays only)."""
    lines = ["", "[[stage]]"]
    for key, value in fields.items():
        if isinstance(value, str):
            shown = toml_string(value)
        else:
            shown = "[" + ", ".join(toml_string(v) for v in value) + "]"
        lines.append(f"{key} = {shown}")
    return "\n".join(lines) + "\n"
