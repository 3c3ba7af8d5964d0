"""The Go interop peer (tests/interop/gopeer): build it, run it, read its log.

The peer is qanat's own small Go program on Go's ``x/crypto/ssh`` and
gorilla/websocket, the stack chisel and outsystemscc are built on. It is
built once per test session from Debian's packages in GOPATH mode, with no
network (``GO111MODULE=off``, ``GOPROXY=off``, ``GOFLAGS`` empty) and a build
cache under the user's cache directory. Without ``go`` or the two source
packages, :func:`missing` says which and the tests skip with that reason
(``make system-deps`` installs them as root).

Usage from a test::

    peer = group.start_program("go client", [str(gopeer), "client", ...], gopeer_env(ca))
    peer.wait_for(CONNECTED)
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from support.timing import scaled

SOURCE_DIR = Path(__file__).resolve().parent.parent / "interop" / "gopeer"
GOPATH_SYSTEM = Path("/usr/share/gocode")
#: Debian package -> the source directory it installs.
PACKAGES = {
    "golang-golang-x-crypto-dev": GOPATH_SYSTEM / "src/golang.org/x/crypto/ssh",
    "golang-github-gorilla-websocket-dev": GOPATH_SYSTEM / "src/github.com/gorilla/websocket",
}

#: Lines the peer logs (stderr), for wait_for().
CONNECTED = r"client: Connected \(Latency"
CONNECTION_ERROR = r"client: Connection error: (.*)"
SERVER_LISTENING = r"server: Listening on (https?)://([0-9.]+):(\d+)"
SERVER_FINGERPRINT = r"server: Fingerprint (\S+)"


def missing() -> str | None:
    """Why the peer cannot be built here, or None when it can."""
    if shutil.which("go") is None:
        return "the Go peer needs `go` (Debian golang-go; `make system-deps` as root)"
    for package, path in PACKAGES.items():
        if not path.is_dir():
            return f"the Go peer needs {path} (Debian {package}; `make system-deps` as root)"
    return None


def go_env(work: Path) -> dict[str, str]:
    """Environment for an offline GOPATH-mode build."""
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "qanat-tests"
    env = dict(os.environ)
    env.update(
        GO111MODULE="off",
        GOPATH=f"{work / 'gopath'}:{GOPATH_SYSTEM}",
        GOFLAGS="",
        GOPROXY="off",
        GOTOOLCHAIN="local",
        CGO_ENABLED="0",
        GOCACHE=str(cache / "go-build"),
    )
    return env


def build(out_dir: Path) -> Path:
    """Build the peer into ``out_dir``; return the binary's path.

    Raises:
        RuntimeError: the build failed (with go's output).
    """
    binary = out_dir / "gopeer"
    done = subprocess.run(
        ["go", "build", "-o", str(binary), "."],
        cwd=SOURCE_DIR,
        env=go_env(out_dir),
        capture_output=True,
        text=True,
        timeout=scaled(300),
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"building the Go peer failed:\n{done.stdout}{done.stderr}")
    return binary


def peer_env(ca_file: str | Path | None = None) -> dict[str, str]:
    """Environment for running the peer: no proxies, ``SSL_CERT_FILE`` when given
    (Go's TLS on Linux reads its trusted roots from there)."""
    env = {k: v for k, v in os.environ.items() if k.lower() not in ("http_proxy", "https_proxy")}
    env.pop("SSL_CERT_DIR", None)
    if ca_file is not None:
        env["SSL_CERT_FILE"] = str(ca_file)
    return env
