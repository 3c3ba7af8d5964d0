"""The gateway's side of the isolation rule (see :mod:`qanat.isolation`).

For a configuration in which two stages' (address, port range) overlap
anyway, the stage listed first in the stage source owns the contested ports,
whatever connects first: a second stage declaring another's port gets a
refusal, never its app connections.
"""

from __future__ import annotations

import logging

from qanat import isolation
from qanat.gateway.stages import StageConfig
from qanat.wire.remotes import Remote

_log = logging.getLogger("qanat.gateway.contested")


def contested_port(
    stages: list[StageConfig], stage: StageConfig, remotes: tuple[Remote, ...], proto: str = ""
) -> str | None:
    """The refusal when a port of ``remotes`` belongs to a stage listed earlier
    whose (address, port range) overlaps ``stage``'s (see qanat.isolation)."""
    found = isolation.contested(
        (_binding(s) for s in stages), _binding(stage), (int(r.local_port) for r in remotes)
    )
    if found is None:
        return None
    port, owner = found
    _log.warning(
        "stage %s: port %d on %s refused: stage %s owns it (overlapping address and port"
        " range); give each stage its own bind address",
        stage.key,
        port,
        stage.bind_host,
        owner.key,
    )
    return isolation.contested_text(port, stage.bind_host, proto)


def _binding(stage: StageConfig) -> isolation.Binding:
    return isolation.Binding(stage.key, stage.bind_host, stage.port_min, stage.port_max)
