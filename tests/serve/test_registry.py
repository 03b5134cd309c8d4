"""The MLflow-backed model registry: register, alias, list, resolve to a cached local bundle, and the CLI.

Creating a SQLite MLflow store runs its migrations (seconds), so one registry is shared by the module.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
import typer
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from torchkiln.artifacts.bundle import BUNDLE_FORMAT
from torchkiln.artifacts.predictor import load_predictor
from torchkiln.cli.registry import registry_app
from torchkiln.core.errors import BundleError, ServeError
from torchkiln.core.io import sha256_file
from torchkiln.serve import registry as reg


@dataclass(frozen=True)
class Registry:
    uri: str
    root: Path
    first: Path  # the original tiny bundle: version 1, champion
    second: Path  # the same with other weights: version 2, challenger


def changed_weights(src: Path, dst: Path) -> Path:
    """A copy of ``src`` whose weights (and so weights_sha256) differ."""
    shutil.copytree(src, dst)
    state = load_file(str(dst / "model.safetensors"))
    first = next(iter(state))
    state[first] = state[first] * 0.5
    save_file(state, str(dst / "model.safetensors"), metadata={"format": BUNDLE_FORMAT})
    meta = json.loads((dst / "bundle.json").read_text())
    meta["weights_sha256"] = sha256_file(dst / "model.safetensors")
    (dst / "bundle.json").write_text(json.dumps(meta))
    return dst


@pytest.fixture(scope="module")
def registry(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Registry:
    root = tmp_path_factory.mktemp("registry")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    second = changed_weights(tiny_bundle, root / "second-bundle")
    assert reg.register_bundle(tiny_bundle, name="tiny", alias="champion", tracking_uri=uri).version == "1"
    assert reg.register_bundle(second, name="tiny", alias="challenger", tracking_uri=uri).version == "2"
    return Registry(uri, root, tiny_bundle, second)


@pytest.fixture
def runner_app() -> typer.Typer:
    app = typer.Typer()
    app.add_typer(registry_app, name="registry")
    return app


def test_versions_are_listed_with_aliases_and_tags(registry: Registry) -> None:
    versions = reg.list_versions("tiny", tracking_uri=registry.uri)
    assert [(v.version, v.aliases) for v in versions] == [("1", ("champion",)), ("2", ("challenger",))]
    assert {(v.task, v.runtime) for v in versions} == {("image-classification", "torch")}
    assert [v.source for v in versions] == [str(registry.first.resolve()), str(registry.second.resolve())]
    # With a SQLite store, the artifacts live beside the database, not in ./mlruns.
    assert versions[0].artifact_uri.startswith((registry.root / "mlartifacts").as_uri())
    assert [v for v in reg.list_versions(tracking_uri=registry.uri) if v.name == "tiny"] == versions


def test_champion_resolves_to_a_bundle_that_predicts_like_the_original(
    registry: Registry, tmp_path: Path, make_image_folder
) -> None:
    resolved = reg.resolve_model_uri("models:/tiny@champion", tracking_uri=registry.uri, cache_dir=tmp_path)
    assert (resolved.name, resolved.version, resolved.alias) == ("tiny", "1", "champion")
    assert resolved.path == tmp_path / "tiny" / "1"
    images = sorted(str(p) for p in make_image_folder(tmp_path / "images", per_class=2).rglob("*.png"))
    expected = load_predictor(registry.first).predict(images)
    assert load_predictor(resolved.path).predict(images) == expected


def test_version_and_challenger_uris_resolve_to_the_same_folder(registry: Registry, tmp_path: Path) -> None:
    by_alias = reg.resolve_model_uri("models:/tiny@challenger", tracking_uri=registry.uri, cache_dir=tmp_path)
    by_version = reg.resolve_model_uri("models:/tiny/2", tracking_uri=registry.uri, cache_dir=tmp_path)
    assert by_alias.path == by_version.path == tmp_path / "tiny" / "2"
    assert (by_version.version, by_version.alias) == ("2", None)
    sha = json.loads((by_version.path / "bundle.json").read_text())["weights_sha256"]
    assert sha == json.loads((registry.second / "bundle.json").read_text())["weights_sha256"]
    assert not [p for p in (tmp_path / "tiny").iterdir() if p.name.startswith(".")]  # no temp folders left


def test_alias_change_is_seen_by_current_version(registry: Registry) -> None:
    from mlflow import MlflowClient

    assert reg.current_version("tiny", "champion", tracking_uri=registry.uri) == "1"
    reg.set_alias("tiny", 2, "champion", tracking_uri=registry.uri)
    try:
        assert reg.current_version("tiny", "champion", tracking_uri=registry.uri) == "2"
        reg.set_alias("tiny", "1", "staging", tracking_uri=registry.uri)  # any valid alias in Python
        assert reg.current_version("tiny", "staging", tracking_uri=registry.uri) == "1"
    finally:
        reg.set_alias("tiny", 1, "champion", tracking_uri=registry.uri)
        MlflowClient(tracking_uri=registry.uri, registry_uri=registry.uri).delete_registered_model_alias(
            "tiny", "staging"
        )
    assert reg.current_version("tiny", "champion", tracking_uri=registry.uri) == "1"


def test_cache_is_reused_and_repaired(
    registry: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mlflow.artifacts

    first = reg.resolve_model_uri("models:/tiny/1", tracking_uri=registry.uri, cache_dir=tmp_path).path
    real = mlflow.artifacts.download_artifacts
    calls: list[str] = []

    def counting(**kwargs):
        calls.append(kwargs["artifact_uri"])
        return real(**kwargs)

    monkeypatch.setattr(mlflow.artifacts, "download_artifacts", counting)
    again = reg.resolve_model_uri("models:/tiny@champion", tracking_uri=registry.uri, cache_dir=tmp_path)
    assert again.path == first
    assert calls == []
    (first / "model.safetensors").write_bytes(b"truncated")  # a damaged cache is downloaded again
    again = reg.resolve_model_uri("models:/tiny/1", tracking_uri=registry.uri, cache_dir=tmp_path)
    assert again.path == first
    assert calls == [reg.list_versions("tiny", tracking_uri=registry.uri)[0].artifact_uri]
    assert sha256_file(first / "model.safetensors") == sha256_file(registry.first / "model.safetensors")


def test_a_concurrent_download_that_wins_is_used(
    registry: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mlflow.artifacts

    real = mlflow.artifacts.download_artifacts

    def racing(**kwargs):
        shutil.copytree(registry.second, tmp_path / "tiny" / "2")  # another process finished first
        (tmp_path / "tiny" / "2" / "winner").write_text("")
        return real(**kwargs)

    monkeypatch.setattr(mlflow.artifacts, "download_artifacts", racing)
    path = reg.resolve_model_uri("models:/tiny/2", tracking_uri=registry.uri, cache_dir=tmp_path).path
    assert (path / "winner").exists()
    assert [p.name for p in (tmp_path / "tiny").iterdir()] == ["2"]


def test_unknown_model_version_and_alias(registry: Registry, tmp_path: Path) -> None:
    u = registry.uri
    with pytest.raises(ServeError) as exc:
        reg.resolve_model_uri("models:/nope@champion", tracking_uri=u, cache_dir=tmp_path)
    assert str(exc.value) == (
        f"No registered model 'nope' in the registry at {u}. Registered: tiny. "
        f"Register one with: kiln registry register BUNDLE --name nope"
    )
    with pytest.raises(ServeError) as exc:
        reg.resolve_model_uri("models:/tiny/7", tracking_uri=u, cache_dir=tmp_path)
    assert str(exc.value) == (
        f"Model 'tiny' has no version 7 in the registry at {u}. Versions: 1, 2. "
        f"See them with: kiln registry list tiny"
    )
    with pytest.raises(ServeError) as exc:
        reg.current_version("tiny", "production", tracking_uri=u)
    assert str(exc.value) == (
        f"Model 'tiny' has no alias 'production' in the registry at {u}. Aliases: challenger -> version 2, "
        f"champion -> version 1. Set one with: kiln registry alias tiny VERSION production"
    )
    with pytest.raises(ServeError, match=r"^Cannot set alias 'v3' on tiny version 1: .*reserved"):
        reg.set_alias("tiny", 1, "v3", tracking_uri=u)
    with pytest.raises(ServeError, match=r"^Model 'tiny' has no version 9 "):
        reg.set_alias("tiny", 9, "champion", tracking_uri=u)


@pytest.mark.parametrize(
    "uri", ["tiny@champion", "models:/tiny", "models:/tiny/x", "models:/a/b@c", "models:/a@", "runs:/x"]
)
def test_malformed_uri(uri: str) -> None:
    with pytest.raises(ServeError) as exc:
        reg.resolve_model_uri(uri, tracking_uri="sqlite:///never-opened.db")
    assert str(exc.value) == (
        f"'{uri}' is not a registry model URI. Expected models:/NAME@ALIAS (e.g. models:/shapes@champion) "
        "or models:/NAME/VERSION (e.g. models:/shapes/3). See the names, versions and aliases with: "
        "kiln registry list"
    )


def test_broken_bundle_is_refused_before_anything_is_logged(registry: Registry, tmp_path: Path) -> None:
    from mlflow import MlflowClient

    broken = shutil.copytree(registry.first, tmp_path / "broken")
    (broken / "config.yaml").unlink()
    client = MlflowClient(tracking_uri=registry.uri, registry_uri=registry.uri)
    runs = len(client.search_runs([client.get_experiment_by_name(reg.EXPERIMENT).experiment_id]))
    with pytest.raises(BundleError, match=r"config\.yaml missing"):
        reg.register_bundle(broken, name="broken", tracking_uri=registry.uri)
    assert len(client.search_runs([client.get_experiment_by_name(reg.EXPERIMENT).experiment_id])) == runs
    assert "broken" not in [m.name for m in client.search_registered_models()]
    with pytest.raises(ServeError, match=r"^Model name 'a/b' cannot be used"):
        reg.register_bundle(registry.first, name="a/b", tracking_uri=registry.uri)


def test_a_version_that_is_not_a_bundle(registry: Registry, tmp_path: Path) -> None:
    from mlflow import MlflowClient

    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "weights.pt").write_bytes(b"not a bundle")
    client = MlflowClient(tracking_uri=registry.uri, registry_uri=registry.uri)
    client.create_registered_model("junk")
    try:
        client.create_model_version("junk", source=junk.as_uri())
        with pytest.raises(BundleError) as exc:
            reg.resolve_model_uri("models:/junk/1", tracking_uri=registry.uri, cache_dir=tmp_path / "cache")
        assert str(exc.value).startswith(
            f"Version 1 of model 'junk' in the registry at {registry.uri} is not a valid torchkiln bundle: "
        )
        assert "bundle.json is missing" in str(exc.value)
        assert str(exc.value).endswith(
            "Register a bundle written by kiln train or kiln export: "
            "kiln registry register BUNDLE --name junk"
        )
        assert not (tmp_path / "cache" / "junk" / "1").exists()
        assert list((tmp_path / "cache" / "junk").iterdir()) == []
    finally:
        client.delete_registered_model("junk")


def test_default_uri_and_cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert reg.registry_uri() == f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}"  # where kiln train logs
    assert reg.registry_uri(runs_dir="exp") == f"sqlite:///{tmp_path / 'exp' / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow:5000")
    assert reg.registry_uri() == "http://mlflow:5000"
    assert reg.registry_uri(runs_dir="exp") == "http://mlflow:5000"
    assert reg.registry_uri("sqlite:///x.db") == "sqlite:///x.db"
    monkeypatch.setenv("KILN_CACHE_DIR", str(tmp_path / "c"))
    assert reg.default_cache_dir() == tmp_path / "c" / "registry"
    monkeypatch.delenv("KILN_CACHE_DIR")
    assert reg.default_cache_dir() == Path.home() / ".cache" / "torchkiln" / "registry"


def test_cli(registry: Registry, runner_app: typer.Typer, tmp_path: Path) -> None:
    runner = CliRunner()
    u = ["--tracking-uri", registry.uri]
    res = runner.invoke(runner_app, ["registry", "register", str(registry.first), "--name", "cli", *u])
    assert res.exit_code == 0, res.output
    assert res.stdout.strip().splitlines()[-1] == "models:/cli/1"
    res = runner.invoke(runner_app, ["registry", "alias", "cli", "1", "challenger", *u])
    assert res.exit_code == 0, res.output
    assert res.stdout.strip() == "models:/cli@challenger -> version 1"
    res = runner.invoke(runner_app, ["registry", "list", *u])
    assert res.exit_code == 0, res.output
    rows = [line for line in res.stdout.splitlines() if "image-classification" in line]
    assert [r.split("│")[1:4] for r in rows] == [
        [" cli  ", "       1 ", " challenger "],
        [" tiny ", "       1 ", " champion   "],
        [" tiny ", "       2 ", " challenger "],
    ]
    res = runner.invoke(runner_app, ["registry", "alias", "cli", "4", "champion", *u])
    assert res.exit_code == 2
    assert "error: Model 'cli' has no version 4" in res.stderr
    res = runner.invoke(runner_app, ["registry", "alias", "cli", "1", "staging", *u])
    assert res.exit_code == 2  # the CLI offers champion and challenger only
    res = runner.invoke(runner_app, ["registry", "list", "nope", *u])
    assert res.exit_code == 2
    assert "error: No registered model 'nope'" in res.stderr
    res = runner.invoke(runner_app, ["registry", "register", str(tmp_path), "--name", "x", *u])
    assert res.exit_code == 2
    assert "bundle.json is missing" in res.stderr
