"""Fixtures for the corporate-network tests: certificates made on the fly
(trustme) and real proxy servers from Debian packages (tinyproxy for HTTP
CONNECT, microsocks for SOCKS5), started on loopback by the tests.

conftest.py re-exports the fixtures; tests import the classes from here
(a module named conftest is ambiguous when several directories have one)."""

from __future__ import annotations

import datetime
import logging
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trustme
from corpnet import free_port, quiet_asyncssh, seconds

PROXY_USER = "alice"
PROXY_PASSWORD = "s3cret-odd.chars"  # tinyproxy accepts few characters


@pytest.fixture(autouse=True)
def _logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="qanat")
    quiet_asyncssh()


# -- certificates ------------------------------------------------------------------------


@dataclass
class Certs:
    """A CA and certificates it issued, as files."""

    dir: Path
    ca: trustme.CA
    ca_file: Path
    server: Path  # key + chain for 127.0.0.1 / localhost
    expired: Path
    client: Path  # client certificate (key + chain)
    other_ca_file: Path  # a CA that issued nothing we serve

    def issue(self, name: str, *identities: str, **kwargs: object) -> Path:
        leaf = self.ca.issue_cert(*identities, **kwargs)  # type: ignore[arg-type]
        path = self.dir / f"{name}.pem"
        leaf.private_key_and_cert_chain_pem.write_to_path(str(path))
        return path


@pytest.fixture
def certs(tmp_path: Path) -> Certs:
    directory = tmp_path / "certs"
    directory.mkdir()
    ca = trustme.CA()
    ca_file = directory / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    other = trustme.CA()
    other_file = directory / "other-ca.pem"
    other.cert_pem.write_to_path(str(other_file))
    made = Certs(
        directory, ca, ca_file, directory / "x", directory / "x", directory / "x", other_file
    )
    made.server = made.issue("server", "127.0.0.1", "localhost")
    now = datetime.datetime.now(datetime.UTC)
    made.expired = made.issue(
        "expired",
        "127.0.0.1",
        "localhost",
        not_before=now - datetime.timedelta(days=30),
        not_after=now - datetime.timedelta(days=1),
    )
    made.client = made.issue("client", "connector-1.acme.example")
    return made


# -- proxies ----------------------------------------------------------------------------


def _need_binary(name: str, package: str) -> str:
    path = shutil.which(name) or (f"/usr/bin/{name}" if Path(f"/usr/bin/{name}").exists() else None)
    if path:
        return path
    if os.environ.get("CI") == "true" or os.geteuid() == 0:
        pytest.fail(
            f"{name} is missing: install the Debian package {package} (make system-deps)",
            pytrace=False,
        )
    pytest.skip(f"{name} not installed and not root: apt-get install {package} to run this test")


def _wait_listening(port: int, proc: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + seconds(5)
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"{what} exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.02)
    raise AssertionError(f"{what} did not listen on 127.0.0.1:{port} within the deadline")


@dataclass
class ProxyServer:
    """A running proxy: its port, URL (with credentials) and log."""

    port: int
    url: str
    log: Path

    def url_with(self, user: str, password: str) -> str:
        from urllib.parse import quote

        scheme = self.url.split("://", 1)[0]
        return f"{scheme}://{quote(user, safe='')}:{quote(password, safe='')}@127.0.0.1:{self.port}"

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


class TinyProxy:
    """Starts tinyproxy with a given configuration (HTTP CONNECT, basic auth)."""

    def __init__(self, tmp_path: Path) -> None:
        self.binary = _need_binary("tinyproxy", "tinyproxy")
        self.tmp_path = tmp_path
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(
        self, *, connect_ports: tuple[int, ...] = (), idle_timeout_s: int = 600
    ) -> ProxyServer:
        port = free_port()
        name = f"tinyproxy-{port}"
        conf = self.tmp_path / f"{name}.conf"
        log = self.tmp_path / f"{name}.log"
        lines = [
            f"Port {port}",
            "Listen 127.0.0.1",
            f"Timeout {idle_timeout_s}",
            "MaxClients 50",
            f"BasicAuth {PROXY_USER} {PROXY_PASSWORD}",
            "LogLevel Connect",
            *(f"ConnectPort {p}" for p in connect_ports),
        ]
        if os.geteuid() == 0:
            lines += ["User nobody", "Group nogroup"]
        conf.write_text("\n".join(lines) + "\n")
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [self.binary, "-d", "-c", str(conf)], stdout=out, stderr=subprocess.STDOUT
            )
        self.procs.append(proc)
        _wait_listening(port, proc, "tinyproxy")
        server = ProxyServer(port, "http://", log)
        server.url = server.url_with(PROXY_USER, PROXY_PASSWORD)
        return server

    def stop(self) -> None:
        for proc in self.procs:
            proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(timeout=seconds(5))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture
def tinyproxy(tmp_path: Path) -> Iterator[TinyProxy]:
    proxies = TinyProxy(tmp_path)
    try:
        yield proxies
    finally:
        proxies.stop()


@pytest.fixture
def microsocks(tmp_path: Path) -> Iterator[ProxyServer]:
    binary = _need_binary("microsocks", "microsocks")
    port = free_port()
    log = tmp_path / "microsocks.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [binary, "-i", "127.0.0.1", "-p", str(port), "-u", PROXY_USER, "-P", PROXY_PASSWORD],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        _wait_listening(port, proc, "microsocks")
        server = ProxyServer(port, "socks5://x", log)
        server.url = server.url_with(PROXY_USER, PROXY_PASSWORD)
        yield server
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=seconds(5))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
