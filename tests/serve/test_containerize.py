"""`kiln containerize`: the build context is complete, lints clean, and carries a bundle that still predicts.

No Docker engine runs here, so the image is never built: hadolint, a YAML parse of compose.yaml and a load of
the copied bundle are what these tests can prove. The wheel build (about two seconds) runs once per module.
"""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import typer
import yaml
from PIL import Image
from typer.testing import CliRunner

from torchkiln import load_predictor
from torchkiln.cli.deploy import containerize_command
from torchkiln.core.errors import BundleError, ServeError
from torchkiln.serve import containerize as cz
from torchkiln.serve.deployments import model_name

HADOLINT = Path(sys.executable).parent / "hadolint"
FILES = {"Dockerfile", ".dockerignore", "compose.yaml", "prometheus.yml", "README.md"}
NAME = "shapes"


@pytest.fixture(scope="module")
def ctx(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("containerize") / "ctx"
    assert cz.containerize(tiny_bundle, out, name=NAME, port=8000, workers=2) == out
    return out


@pytest.fixture(scope="module")
def compose(ctx: Path) -> dict[str, Any]:
    return yaml.safe_load((ctx / "compose.yaml").read_text())


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """``(INSTRUCTION, arguments)`` pairs, with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n\s*", " ", dockerfile.read_text())
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    return [(ln.split(None, 1)[0].upper(), ln.split(None, 1)[1]) for ln in lines]


def png(seed: int = 0) -> bytes:
    arr = np.random.default_rng(seed).integers(0, 255, (16, 16, 3), dtype=np.uint8)
    arr[6:10, :] = 230  # a horizontal bar, one of the tiny bundle's classes
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def test_context_has_the_files(ctx: Path) -> None:
    top = {p.name for p in ctx.iterdir() if p.is_file()}
    assert top == FILES
    assert sorted(p.name for p in (ctx / "models" / NAME).iterdir()) == [
        "bundle.json",
        "config.yaml",
        "model.safetensors",
        "profile.json",  # the training inputs' profile: the server flags inputs far from them
        "reference.safetensors",  # the held-out reference sample that drift monitoring compares with
    ]
    assert not list(ctx.parent.glob(".ctx.*")), "the temporary folder was left behind"


def test_dockerfile_passes_hadolint(ctx: Path, tmp_path: Path) -> None:
    # Our own config, so a user-level hadolint.yaml cannot loosen the rules; inline ignores are disabled too.
    config = tmp_path / "hadolint.yaml"
    config.write_text("failure-threshold: style\nignored: []\n")
    proc = subprocess.run(
        [str(HADOLINT), "--no-color", "--disable-ignore-pragma", "-c", str(config), "Dockerfile"],
        cwd=ctx,
        capture_output=True,
        text=True,
        check=False,
    )
    assert (proc.returncode, proc.stdout + proc.stderr) == (0, "")


def test_dockerfile_shape(ctx: Path) -> None:
    ins = instructions(ctx / "Dockerfile")
    froms = [args for op, args in ins if op == "FROM"]
    assert len(froms) >= 2
    assert all(re.fullmatch(r"[\w./-]+:[\w.-]+ AS \w+", f) for f in froms), froms  # tagged, named stages
    users = [args for op, args in ins if op == "USER"]
    assert users and users[-1].split(":")[0] not in {"root", "0"}
    health = [args for op, args in ins if op == "HEALTHCHECK"]
    assert len(health) == 1 and "/readyz" in health[0] and "urllib" in health[0]
    cmd = json.loads(next(args for op, args in ins if op == "CMD"))
    assert cmd == [
        "kiln",
        "serve",
        f"/models/{NAME}",
        "--name",
        NAME,
        "--host",
        "0.0.0.0",
        "--port",
        "8000",
        "--workers",
        "2",
    ]
    assert ("EXPOSE", "8000") in ins
    assert "download.pytorch.org/whl/cpu" in (ctx / "Dockerfile").read_text()


def test_dockerignore_admits_exactly_what_the_dockerfile_copies(ctx: Path) -> None:
    patterns = [
        ln for ln in (ctx / ".dockerignore").read_text().splitlines() if ln and not ln.startswith("#")
    ]
    assert patterns[0] == "*"
    allowed = [p[1:] for p in patterns[1:]]
    sources = [args.split()[0] for op, args in instructions(ctx / "Dockerfile") if op == "COPY"]
    sources = [s for s in sources if not s.startswith("--from")]
    assert sources and all(any(s.startswith(a) for a in allowed) for s in sources), (sources, allowed)
    assert all((ctx / s).exists() for s in sources)


def test_compose_services_and_ports(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) == {"server", "postgres", "prometheus"}
    ports = [p for s in services.values() for p in s.get("ports", [])]
    assert ports and all(p.startswith("127.0.0.1:") for p in ports), ports
    assert "127.0.0.1:8000:8000" in services["server"]["ports"]
    env = services["server"]["environment"]
    assert env["KILN_SERVE_LOG_URL"] == (
        "postgresql+psycopg://kiln:${POSTGRES_PASSWORD:?set POSTGRES_PASSWORD}@postgres:5432/kiln"
    )
    assert "${KILN_SERVE_ADMIN_TOKEN" in env["KILN_SERVE_ADMIN_TOKEN"]
    assert services["server"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    pg = services["postgres"]
    assert pg["image"] == "postgres:16"
    assert "pg_isready" in " ".join(pg["healthcheck"]["test"])
    assert any(v.split(":")[0] in compose["volumes"] for v in pg["volumes"])  # a named volume
    assert "./prometheus.yml:/etc/prometheus/prometheus.yml:ro" in services["prometheus"]["volumes"]


def test_prometheus_scrapes_the_server(ctx: Path) -> None:
    cfg = yaml.safe_load((ctx / "prometheus.yml").read_text())
    (job,) = cfg["scrape_configs"]
    assert job["metrics_path"] == "/metrics"
    assert job["static_configs"][0]["targets"] == ["server:8000"]


def test_readme_says_how_to_build_and_what_was_not_checked(ctx: Path) -> None:
    readme = (ctx / "README.md").read_text()
    assert f"docker build -t {NAME} ." in readme and "docker compose up" in readme
    assert "has not been built or run there" in readme


def test_copied_bundle_predicts_like_the_original(ctx: Path, tiny_bundle: Path) -> None:
    image = png()
    copied = load_predictor(ctx / "models" / NAME).predict([image], top_k=3)
    assert copied == load_predictor(tiny_bundle).predict([image], top_k=3)
    assert len(copied[0]["top_k"]) == 3


def test_the_wheel_is_there_and_complete(ctx: Path) -> None:
    (wheel,) = (ctx / "wheels").glob("torchkiln-*.whl")
    assert f"COPY wheels/{wheel.name} " in (ctx / "Dockerfile").read_text()
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {
        "torchkiln/cli/main.py",
        "torchkiln/serve/containerize.py",
        "torchkiln/artifacts/bundle.py",
        "torchkiln/tasks/forecasting/task.py",
        "torchkiln/components/templates/Dockerfile.j2",  # templates ship as package data
        "torchkiln/tasks/forecasting/templates/report.html.j2",
    } <= names
    (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    # The task families are found through these; a wheel without them would serve no task.
    assert "[torchkiln.tasks]" in text and "forecasting = torchkiln.tasks.forecasting.task:TASK" in text


def test_non_empty_out_is_refused_without_overwrite(tiny_bundle: Path, tmp_path: Path) -> None:
    (tmp_path / "keep.txt").write_text("mine")
    with pytest.raises(ServeError) as info:
        cz.containerize(tiny_bundle, tmp_path)
    assert str(info.value) == (
        f"'{tmp_path}' exists and is not empty. Expected a new or empty folder for the build context. "
        f"Choose another folder, or replace it with --overwrite (overwrite=True in Python)."
    )
    assert (tmp_path / "keep.txt").read_text() == "mine"


def test_broken_bundle_and_bad_arguments(tiny_bundle: Path, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(BundleError, match=r"bundle\.json is missing"):
        cz.containerize(tmp_path / "empty", tmp_path / "ctx")
    with pytest.raises(ServeError, match=r"'name' parameter .* Got 'My Model' instead"):
        cz.containerize(tiny_bundle, tmp_path / "ctx", name="My Model")
    with pytest.raises(ServeError, match=r"'port' parameter .* Got 0 instead"):
        cz.containerize(tiny_bundle, tmp_path / "ctx", port=0)
    with pytest.raises(ServeError, match="overlaps the bundle"):
        cz.containerize(tiny_bundle, tiny_bundle.parent, overwrite=True)
    assert not (tmp_path / "ctx").exists()


def test_a_failed_build_leaves_nothing(
    tiny_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fail(src: Path, dest: Path) -> Path:
        raise ServeError("wheel build failed")

    monkeypatch.setattr(cz, "_build_wheel", fail)
    with pytest.raises(ServeError, match="wheel build failed"):
        cz.containerize(tiny_bundle, tmp_path / "ctx")
    assert list(tmp_path.iterdir()) == []


def test_needs_an_editable_install(monkeypatch: pytest.MonkeyPatch) -> None:
    class Dist:
        def read_text(self, name: str) -> str:
            return json.dumps({"url": "https://files.pythonhosted.org/torchkiln.whl", "archive_info": {}})

    monkeypatch.setattr(cz.metadata, "distribution", lambda name: Dist())
    with pytest.raises(
        ServeError, match=re.escape("needs torchkiln installed from a source checkout (pip install -e .)")
    ):
        cz._source_dir()


def test_default_name() -> None:
    assert model_name("digits-cnn", "bundle") == "digits-cnn"
    assert model_name("digits-cnn", "bundle-onnx-int8-static") == "digits-cnn-onnx-int8-static"
    assert model_name("My_Run", "bundle") == "my-run"


def cli() -> typer.Typer:
    app = typer.Typer()
    app.command("containerize")(containerize_command)  # as cli/main.py registers it
    app.command("noop")(lambda: None)  # a second command, so typer keeps the subcommand name
    return app


def test_cli_error_exit_code_2(tiny_bundle: Path, tmp_path: Path) -> None:
    (tmp_path / "keep.txt").write_text("mine")
    result = CliRunner().invoke(cli(), ["containerize", str(tiny_bundle), "--out", str(tmp_path)])
    assert result.exit_code == 2
    assert "error: " in result.output and "exists and is not empty" in result.output
    assert "Traceback" not in result.output


def test_cli_force_replaces_and_prints_next_steps(tiny_bundle: Path, tmp_path: Path) -> None:
    (tmp_path / "stale.txt").write_text("old")
    args = ["containerize", str(tiny_bundle), "--out", str(tmp_path), "--overwrite", "--port", "9000"]
    result = CliRunner().invoke(cli(), args)
    assert result.exit_code == 0, result.output
    assert not (tmp_path / "stale.txt").exists()
    assert "  Dockerfile" in result.output and "  compose.yaml" in result.output
    assert "docker build -t images-cnn ." in result.output  # the default name: the tiny run's name
    assert "127.0.0.1:9000:9000" in (tmp_path / "compose.yaml").read_text()
