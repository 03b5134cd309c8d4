"""`kiln containerize`: write a Docker build context that serves one bundle with `kiln serve`.

    OUT/
      Dockerfile          multi-stage: builder (venv, CPU torch, torchkiln[serve,export]) -> slim runtime
      .dockerignore       "*" then the two folders the Dockerfile copies
      wheels/             the torchkiln wheel, built from the source checkout that is running now
      models/NAME/        a copy of the bundle (checked with load_bundle first)
      compose.yaml        the server, PostgreSQL for the prediction log, Prometheus scraping /metrics
      prometheus.yml
      README.md           how to build and run it

The context is written to a temporary folder beside OUT and renamed into place, so an error never leaves
half of one. The files come from Jinja2 templates in ``torchkiln/components/templates`` (package data,
rendered without HTML escaping, an undefined variable is an error); the ``$VAR`` and ``${VAR:?...}`` of
Dockerfiles and compose files are not Jinja2 syntax and pass through untouched.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tempfile
from importlib import metadata
from pathlib import Path
from urllib.parse import unquote, urlparse

from torchkiln.artifacts.bundle import load_bundle
from torchkiln.components.html import render
from torchkiln.core._version import __version__
from torchkiln.core.errors import ServeError
from torchkiln.serve.deployments import model_name

TORCH, TORCHVISION = "2.14.1", "0.29.1"  # the Makefile's pins: the image runs what the tests ran
BASE_IMAGE = "python:3.11-slim"  # both stages: the venv's python symlink must resolve in the runtime
POSTGRES_IMAGE = "postgres:16"
PROMETHEUS_IMAGE = "prom/prometheus:v3.5.0"
UID = 10001  # fixed, so volume ownership and Kubernetes runAsUser are predictable
NAME_RE = re.compile(r"[a-z0-9]+(?:[._-][a-z0-9]+)*")  # a Docker image name component and a URL segment

# Output file -> its template in torchkiln/components/templates (Jinja2, rendered without autoescape).
TEMPLATES = {
    "Dockerfile": "Dockerfile.j2",
    ".dockerignore": "dockerignore.j2",
    "compose.yaml": "compose.yaml.j2",
    "prometheus.yml": "prometheus.yml.j2",
    "README.md": "container_readme.md.j2",
}


def containerize(
    bundle: str | Path,
    out: str | Path,
    *,
    name: str | None = None,
    port: int = 8000,
    workers: int = 2,
    overwrite: bool = False,
) -> Path:
    """Write a Docker build context (Dockerfile, compose.yaml, the bundle, a torchkiln wheel) to ``out``.

    Args:
        bundle: a bundle or a run directory holding ``bundle/``; it is loaded once to prove it works.
        out: the folder to create; it must not exist or be empty unless ``overwrite``.
        name: the model name (URL segment, image name, ``/models/NAME``); default: from the run name.
        port: the port the server listens on inside the container, and publishes on 127.0.0.1.
        workers: server worker processes (each holds one copy of the model).
        overwrite: replace a non-empty ``out``.

    Returns:
        The ``out`` path.

    Raises:
        BundleError: the bundle is incomplete, from another version, or corrupt.
        ServeError: bad arguments, ``out`` not empty without ``overwrite``, torchkiln not installed from a
            source checkout, or the wheel build failed.

    Example:
        >>> containerize("runs/digits-cnn/20261124-031936", "deploy/digits")
        PosixPath('deploy/digits')
    """
    out = Path(out)
    loaded = load_bundle(bundle)
    name = name if name is not None else model_name(loaded.config.run_name, loaded.path.name)
    _check_args(loaded.path, out, name=name, port=port, workers=workers, overwrite=overwrite)
    src = _source_dir()

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        shutil.copytree(loaded.path, tmp / "models" / name)
        wheel = _build_wheel(src, tmp / "wheels")
        values = {
            "name": name,
            "port": port,
            "workers": workers,
            "uid": UID,
            "wheel": wheel.name,
            "version": __version__,
            "sha256": loaded.meta.get("weights_sha256", "unknown"),
            "bundle": loaded.path.resolve(),
            "base": BASE_IMAGE,
            "torch": TORCH,
            "torchvision": TORCHVISION,
            "postgres": POSTGRES_IMAGE,
            "prometheus": PROMETHEUS_IMAGE,
        }
        for fname, template in TEMPLATES.items():
            (tmp / fname).write_text(render(template, **values), encoding="utf-8")
        _make_readable(tmp)
        _replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _check_args(bundle: Path, out: Path, *, name: str, port: int, workers: int, overwrite: bool) -> None:
    if not NAME_RE.fullmatch(name) or len(name) > 63:
        raise ServeError(
            f"The 'name' parameter of containerize must be lowercase letters and digits, optionally "
            f"joined by single '.', '_' or '-', at most 63 characters (it becomes an image name and a URL "
            f"segment). Got {name!r} instead. Example: --name digits-cnn"
        )
    if not 1 <= port <= 65535:
        raise ServeError(
            f"The 'port' parameter of containerize must be an int in 1..65535. Got {port} instead."
        )
    if workers < 1:
        raise ServeError(
            f"The 'workers' parameter of containerize must be an int >= 1. Got {workers} instead."
        )
    b, o = bundle.resolve(), out.resolve()
    if b == o or b.is_relative_to(o) or o.is_relative_to(b):
        raise ServeError(
            f"'{out}' overlaps the bundle '{bundle}'. Expected an output folder outside the bundle (and not "
            f"holding it). Choose another folder, e.g. deploy/{name}."
        )
    if out.exists() and not out.is_dir():
        raise ServeError(f"'{out}' is a file. Expected a new or empty folder for the build context.")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise ServeError(
            f"'{out}' exists and is not empty. Expected a new or empty folder for the build context. "
            f"Choose another folder, or replace it with --overwrite (overwrite=True in Python)."
        )


def _source_dir() -> Path:
    """The source checkout of the running torchkiln (an editable install), to build the wheel from."""
    hint = (
        "containerize needs torchkiln installed from a source checkout (pip install -e .) so it can build "
        "the wheel that goes into the image"
    )
    try:
        direct_url = metadata.distribution("torchkiln").read_text("direct_url.json")
    except metadata.PackageNotFoundError:
        raise ServeError(
            f"{hint}; torchkiln is not installed in {sys.prefix}. Run: pip install -e ."
        ) from None
    info = json.loads(direct_url) if direct_url else {}
    url = urlparse(info.get("url", ""))
    src = Path(unquote(url.path))
    if (
        not info.get("dir_info", {}).get("editable")
        or url.scheme != "file"
        or not (src / "pyproject.toml").is_file()
    ):
        where = info.get("url") or "an index (PyPI or a wheel)"
        raise ServeError(
            f"{hint}; this torchkiln was installed from {where}. Run in a checkout: pip install -e ."
        )
    return src


def _build_wheel(src: Path, dest: Path) -> Path:
    """``pip wheel`` the checkout, without build isolation (no network, about two seconds)."""
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "--no-deps",
        "--no-build-isolation",
        "-q",
        "-w",
        str(dest),
        str(src),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        log = (proc.stderr or proc.stdout).strip()
        if "setuptools" in log and ("No module named" in log or "Cannot import" in log):
            raise ServeError(
                f"Building the torchkiln wheel from '{src}' needs setuptools in this environment (the build "
                f"runs without isolation, so offline). Install it: {sys.executable} -m pip install setuptools"
            )
        tail = "\n".join(log.splitlines()[-15:])
        raise ServeError(
            f"Building the torchkiln wheel from '{src}' failed:\n{tail}\nCommand: {' '.join(cmd)}"
        )
    wheels = sorted(dest.glob("torchkiln-*.whl"))
    if len(wheels) != 1:
        raise ServeError(f"Expected one torchkiln wheel in '{dest}' after the build; found {len(wheels)}.")
    return wheels[0]


def _make_readable(root: Path) -> None:
    # COPY keeps the context's modes; the server runs as UID 10001, so everything must be world-readable.
    root.chmod(0o755)
    for p in root.rglob("*"):
        p.chmod(0o755 if p.is_dir() else 0o644)


def _replace_dir(tmp: Path, out: Path) -> None:
    old = out.with_name(f".{out.name}.old")
    if out.exists():
        shutil.rmtree(old, ignore_errors=True)
        out.rename(old)
    tmp.rename(out)
    shutil.rmtree(old, ignore_errors=True)
