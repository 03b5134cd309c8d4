"""Serve-test fixtures: one bundle behind the in-process app (``serve_one``), and a private, throwaway
PostgreSQL server (`initdb` + `pg_ctl` in a temporary folder).

PostgreSQL listens on a free loopback port only, trusts local connections, and is stopped and deleted at the
end of the session. The binaries come from Debian's `postgresql` package, which `.ci/run` installs.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from torchkiln.serve.app import create_app
from torchkiln.serve.settings import load_settings
from torchkiln.serve.workers import WorkerSync

from ..conftest import running

PG_USER = "kiln"
PG_DB = "kiln_test"


def pg_bindir() -> Path | None:
    """The `bin` folder of the newest PostgreSQL installed, or None."""
    found = [p.parent for p in Path("/usr/lib/postgresql").glob("*/bin/initdb")]
    found.sort(key=lambda b: int(b.parent.name) if b.parent.name.isdigit() else 0)
    if found:
        return found[-1]
    initdb = shutil.which("initdb")
    return Path(initdb).resolve().parent if initdb else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """``postgresql+psycopg://kiln@127.0.0.1:PORT/kiln_test`` on a server that lives for the session."""
    bindir = pg_bindir()
    if bindir is None:
        pytest.skip("PostgreSQL is missing (no initdb). `.ci/run` installs it: apt-get install postgresql")
    as_user: list[str] = []
    root = Path(tempfile.mkdtemp(prefix="kiln-pg-", dir="/tmp"))
    if os.geteuid() == 0:  # initdb refuses to run as root
        no_user = subprocess.run(["id", "postgres"], capture_output=True).returncode != 0
        if no_user or shutil.which("runuser") is None:
            shutil.rmtree(root)
            pytest.skip("Running as root needs the 'postgres' system user and runuser to start PostgreSQL")
        as_user = ["runuser", "-u", "postgres", "--"]
        shutil.chown(root, "postgres", "postgres")
    root.chmod(0o755)
    data, port = root / "data", free_port()

    def pg(tool: str, *args: str) -> None:
        cmd = [*as_user, str(bindir / tool), *args]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        if done.returncode:
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stdout}\n{done.stderr}")

    try:
        pg("initdb", "-D", str(data), "-U", PG_USER, "--auth=trust", "-E", "UTF8", "--no-sync")
        options = f"-p {port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={root} -c fsync=off"
        pg("pg_ctl", "start", "-w", "-D", str(data), "-l", str(root / "server.log"), "-o", options)
        with psycopg.connect(host="127.0.0.1", port=port, user=PG_USER, dbname="postgres") as conn:
            conn.autocommit = True
            conn.execute(f"CREATE DATABASE {PG_DB}")
        yield f"postgresql+psycopg://{PG_USER}@127.0.0.1:{port}/{PG_DB}"
    finally:
        if (data / "postmaster.pid").exists():
            pg("pg_ctl", "stop", "-D", str(data), "-m", "immediate", "-w")
        shutil.rmtree(root, ignore_errors=True)


@asynccontextmanager
async def _serve_one(
    tmp_path: Path,
    bundle: Path,
    name: str,
    sync: WorkerSync | None = None,
    model: dict[str, Any] | None = None,
    **settings: Any,
) -> AsyncIterator[httpx.AsyncClient]:
    spec = {"uri": str(bundle), "name": name} | (model or {})
    s = load_settings(models=[spec], log_url=f"sqlite:///{tmp_path}/p.db", **settings)
    app = create_app(s, sync)
    async with running(app) as client:
        yield client


@pytest.fixture
def serve_one() -> Callable[..., AbstractAsyncContextManager[httpx.AsyncClient]]:
    """``async with serve_one(tmp_path, bundle, name, **settings) as client``: the app with ``bundle``
    loaded as ``name``, its prediction log in ``tmp_path/p.db`` and any other serve ``settings``
    (``max_items=4``); the client talks to it in process. ``sync=`` makes it one of several workers;
    ``model=`` adds to the model's entry (``{"challenger": PATH}``)."""
    return _serve_one
