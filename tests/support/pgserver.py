"""A throwaway PostgreSQL server for the adapter tests.

Started once per test session from Debian's ``postgresql`` package: initdb
into a fresh directory under /tmp, then ``pg_ctl start`` on a free loopback
port with its Unix socket in that directory, durability switched off (the
data is thrown away). As root, the server runs as the ``postgres`` user
because initdb refuses root. Each test gets its own schema of one database
(``?options=-csearch_path=...`` in its URL): creating a schema takes
milliseconds where creating a database takes a third of a second.
"""

from __future__ import annotations

import contextlib
import glob
import itertools
import os
import pwd
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import psycopg

from support.servers import free_port

USER = "qanat"
PASSWORD = "pg-test-secret"  # the throwaway server's only password
DATABASE = "qanat_tests"


def find_bindir() -> Path | None:
    """The newest PostgreSQL server's bin directory, or None."""

    def version(path: str) -> tuple[int, ...]:
        return tuple(int(n) for n in re.findall(r"\d+", path))

    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=version)
    if candidates:
        return Path(candidates[-1]).parent
    found = shutil.which("initdb")
    return Path(found).parent if found and shutil.which("pg_ctl") else None


@dataclass
class PgServer:
    bindir: Path
    root: Path
    port: int
    run_as: pwd.struct_passwd | None
    _counter: itertools.count[int]

    @classmethod
    def start(cls, bindir: Path) -> PgServer:
        run_as = None
        if os.geteuid() == 0:
            name = "postgres" if _has_user("postgres") else "nobody"
            run_as = pwd.getpwnam(name)
        root = Path(tempfile.mkdtemp(prefix="qanat-pg-"))
        if run_as is not None:
            os.chown(root, run_as.pw_uid, run_as.pw_gid)
        server = cls(bindir, root, 0, run_as, itertools.count(1))
        try:
            server._initdb()
            server._start()
            with server.connect() as conn:
                conn.execute(f"CREATE DATABASE {DATABASE}")
        except BaseException:
            server.stop()
            raise
        return server

    def url(self, database: str = "postgres", *, password: str = PASSWORD) -> str:
        return f"postgresql://{USER}:{password}@127.0.0.1:{self.port}/{database}"

    def connect(self, database: str = "postgres") -> psycopg.Connection[tuple[object, ...]]:
        return psycopg.connect(self.url(database), autocommit=True, connect_timeout=5)

    def create_schema(self) -> str:
        """A fresh empty schema in the tests' database; a URL that uses it."""
        name = f"test_{next(self._counter)}"
        with self.connect(DATABASE) as conn:
            conn.execute(f'CREATE SCHEMA "{name}"')
        return self.url(DATABASE) + f"?options=-csearch_path%3D{name}"

    def pause(self) -> None:
        """Stop the server (fast shutdown: clients are disconnected), keeping its data."""
        self._run("pg_ctl", "-D", "data", "-m", "fast", "-w", "stop")

    def resume(self) -> None:
        """Start it again on the same port."""
        self._start(port=self.port)

    def stop(self) -> None:
        if (self.root / "data" / "postmaster.pid").exists():
            with contextlib.suppress(subprocess.SubprocessError, OSError):
                self._run("pg_ctl", "-D", "data", "-m", "immediate", "-w", "stop")
        shutil.rmtree(self.root, ignore_errors=True)

    def _initdb(self) -> None:
        pwfile = self.root / "pw"
        pwfile.write_text(PASSWORD + "\n")
        if self.run_as is not None:
            os.chown(pwfile, self.run_as.pw_uid, self.run_as.pw_gid)
        self._run(
            "initdb",
            "-D",
            "data",
            "-U",
            USER,
            f"--pwfile={pwfile}",
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            "--no-locale",
            "-E",
            "UTF8",
            "--no-sync",
        )

    def _start(self, port: int = 0) -> None:
        last_error = ""
        for _ in range(3):  # the free port may be taken before the server binds it
            self.port = port or free_port()
            options = (
                f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.root}"
                " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
                " -c max_connections=100"
            )
            try:
                self._run(
                    "pg_ctl", "-D", "data", "-l", "log", "-w", "-t", "30", "-o", options, "start"
                )
                return
            except subprocess.CalledProcessError:
                log = self.root / "log"
                last_error = log.read_text()[-2000:] if log.exists() else ""
        raise RuntimeError(f"PostgreSQL did not start:\n{last_error}")

    def _run(self, program: str, *args: str) -> None:
        kwargs: dict[str, object] = {}
        if self.run_as is not None:
            kwargs = {"user": self.run_as.pw_uid, "group": self.run_as.pw_gid, "extra_groups": []}
        subprocess.run(
            [str(self.bindir / program), *args],
            cwd=self.root,
            check=True,
            capture_output=True,
            timeout=60,
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C"},
            **kwargs,  # type: ignore[arg-type]
        )


def _has_user(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True
