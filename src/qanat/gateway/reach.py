"""How apps reach ``secure-gateway``: what ``qanat hosts`` prints.

A stage's endpoints listen on the stage's bind address; apps know them as
``secure-gateway:<port>``. Three ways to make that name resolve, all pure
text rendered here (see docs/operations.md, "Reaching secure-gateway"):

- an ``/etc/hosts`` line,
- a DNS A/AAAA record (same address, written by the operator),
- a Kubernetes Service named ``secure-gateway`` without a selector, plus an
  EndpointSlice pointing at the bind address, in the stage's namespace.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from qanat.errors import ConfigError
from qanat.gateway.stages import StageConfig

NAME = "secure-gateway"


def hosts_line(stage: StageConfig, name: str = NAME) -> str:
    """The ``/etc/hosts`` line that makes ``name`` reach ``stage``'s endpoints."""
    return f"{stage.bind_host} {name}"


def kubernetes_manifest(
    stage: StageConfig, namespace: str, ports: Sequence[int], name: str = NAME
) -> str:
    """A Service without selector and its EndpointSlice, as YAML text.

    Raises:
        ConfigError: without ports, or when Kubernetes would not accept the
            bind address as an endpoint (loopback, link-local, unspecified).
    """
    if not ports:
        raise ConfigError("--port: name at least one endpoint port for the Service")
    address = ipaddress.ip_address(stage.bind_host)
    if address.is_loopback or address.is_link_local or address.is_unspecified:
        raise ConfigError(
            f"stage {stage.key}: bind address {address} cannot be a Kubernetes endpoint "
            "(loopback, link-local and unspecified addresses are refused); bind the stage "
            "on an address the cluster's pods can route to"
        )
    family = "IPv6" if address.version == 6 else "IPv4"
    service_ports = "".join(
        f"    - name: p{p}\n      protocol: TCP\n      port: {p}\n      targetPort: {p}\n"
        for p in ports
    )
    slice_ports = "".join(f"  - name: p{p}\n    protocol: TCP\n    port: {p}\n" for p in ports)
    return (
        f"# secure-gateway for stage {stage.key}: apps in namespace {namespace} reach\n"
        f"# its endpoints as {name}:<port>; traffic goes to the gateway at {address}.\n"
        "apiVersion: v1\n"
        "kind: Service\n"
        "metadata:\n"
        f"  name: {name}\n"
        f"  namespace: {namespace}\n"
        "spec:\n"
        "  # No selector: the endpoints are the gateway's stage address, below.\n"
        "  ports:\n"
        f"{service_ports}"
        "---\n"
        "apiVersion: discovery.k8s.io/v1\n"
        "kind: EndpointSlice\n"
        "metadata:\n"
        f"  name: {name}-1\n"
        f"  namespace: {namespace}\n"
        "  labels:\n"
        f"    kubernetes.io/service-name: {name}\n"
        "    endpointslice.kubernetes.io/managed-by: qanat.operator\n"
        f"addressType: {family}\n"
        "ports:\n"
        f"{slice_ports}"
        "endpoints:\n"
        f'  - addresses: ["{address}"]\n'
    )
