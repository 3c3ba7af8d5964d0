"""The compose file and the Kubernetes manifests keep their promises (parsed, not run)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import yaml

from qanat.cli import build_parser
from qanat.telemetry.httpd import OPS_PATHS

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def load_all(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def parse_gateway(args: list[str]) -> Any:
    parsed = build_parser().parse_args(args)
    assert parsed.command == "gateway"
    assert parsed.func.__name__ == "_cmd_gateway"
    return parsed


def duration(text: str) -> float:
    from qanat.connector.options import parse_duration

    return parse_duration(text, "test")


def test_compose_gateways_are_cluster_nodes_behind_the_balancer() -> None:
    doc = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services = doc["services"]
    gateways = {name: s for name, s in services.items() if name.startswith("gateway-")}
    assert len(gateways) == 3
    haproxy = (DEPLOY / "haproxy.cfg").read_text()
    for name, service in gateways.items():
        args = parse_gateway(service["command"])
        env = service["environment"]
        assert env["QANAT_NATS_URL"].startswith("nats://nats:")
        assert "@postgres:" in env["QANAT_DATABASE_URL"]
        assert args.node_link_advertise == f"{service['hostname']}:7946"
        _host, port = args.listen.rsplit(":", 1)
        assert re.search(rf"server \w+ {name}:{port} check", haproxy), name
        # The endpoint is checked on the node's readiness, so a drain is seen first.
        assert re.search(rf"server \w+ {name}:8081 check port {port} ", haproxy), name
        secret = Path(args.cluster_secret_file).name
        assert secret in service["secrets"]
        assert secret in doc["secrets"]
        assert duration(service["stop_grace_period"]) > duration(args.drain_timeout) + duration(
            args.drain_grace
        )
        probe = " ".join(service["healthcheck"]["test"])
        path = re.search(r"http://127\.0\.0\.1:(\d+)(/\w+)", probe)
        assert path is not None
        assert path.group(1) == port
        assert path.group(2) in OPS_PATHS
    assert {"postgres", "nats", "portal", "balancer"} <= services.keys()
    assert "-js" in services["nats"]["command"]  # presence needs JetStream
    portal = build_parser().parse_args(services["portal"]["command"])
    assert portal.nats == "nats://nats:4222"
    assert "option redispatch" in haproxy


def test_kubernetes_gateway_deployment_probes_drain_and_services() -> None:
    docs = load_all(DEPLOY / "kubernetes" / "gateway.yaml")
    kinds = {(d["kind"], d["metadata"]["name"]): d for d in docs}
    deployment = kinds[("Deployment", "qanat-gateway")]
    pod = deployment["spec"]["template"]
    labels = pod["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"] == labels
    container = pod["spec"]["containers"][0]
    args = parse_gateway([a.replace("$(POD_IP)", "10.0.0.9") for a in container["args"]])
    env = {e["name"] for e in container["env"]}
    assert {"QANAT_DATABASE_URL", "QANAT_NATS_URL", "QANAT_NODE"} <= env
    listen_port = int(args.listen.rsplit(":", 1)[1])
    link_port = int(args.node_link.rsplit(":", 1)[1])
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["front-door"] == listen_port
    assert ports["node-link"] == link_port
    for probe in ("readinessProbe", "livenessProbe"):
        http = container[probe]["httpGet"]
        assert http["path"] in OPS_PATHS
        assert http["port"] == listen_port
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    pre_stop = " ".join(container["lifecycle"]["preStop"]["exec"]["command"])
    pre_stop_s = float(re.search(r"sleep\((\d+(?:\.\d+)?)\)", pre_stop).group(1))  # type: ignore[union-attr]
    grace = pod["spec"]["terminationGracePeriodSeconds"]
    assert grace > pre_stop_s + duration(args.drain_grace) + duration(args.drain_timeout)
    mount = container["volumeMounts"][0]["mountPath"]
    assert args.cluster_secret_file.startswith(mount)
    connectors = kinds[("Service", "qanat-connectors")]
    assert connectors["spec"]["selector"] == labels
    assert connectors["spec"]["ports"][0]["targetPort"] == listen_port
    policy = kinds[("NetworkPolicy", "qanat-node-link-only-from-gateways")]
    assert policy["spec"]["ingress"][0]["from"][0]["podSelector"]["matchLabels"] == labels
    assert policy["spec"]["ingress"][0]["ports"] == [{"port": link_port}]

    stage_docs = load_all(DEPLOY / "kubernetes" / "stage-service.yaml")
    stage = next(d for d in stage_docs if d["metadata"]["namespace"] == "qanat")
    assert stage["spec"]["selector"] == labels
    for port in stage["spec"]["ports"]:
        assert ports[port["name"]] == port["targetPort"]
    alias = next(d for d in stage_docs if d["metadata"]["name"] == "secure-gateway")
    assert alias["spec"]["externalName"].startswith(stage["metadata"]["name"] + ".qanat.")


def test_the_dockerfile_copies_what_exists_and_runs_the_command() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    assert 'ENTRYPOINT ["qanat"]' in text
    for line in text.splitlines():
        if line.startswith("COPY "):
            for source in shlex.split(line)[1:-1]:
                assert (DEPLOY.parent / source).exists(), source
