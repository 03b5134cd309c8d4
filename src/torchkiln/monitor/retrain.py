"""``kiln retrain CONFIG --model NAME``: the closed loop from new labelled data to a promoted or rejected
challenger, every step logged and every decision written down.

1. data: ``--data`` and/or the feedback-labelled inputs of the prediction log, merged with the original
   training data by the policy in :mod:`torchkiln.monitor.data_merge`, checked by the task's ``prepare``;
2. train a challenger: fine-tuned from the champion's bundle (``model.init_from``) or from scratch;
3. evaluate champion and challenger on the same fresh test set; McNemar's test and the minimum effect
   (:func:`torchkiln.monitor.decision.judge`);
4. register the challenger and point ``challenger`` at it;
5. replay the last window of logged traffic through both: agreement, and accuracy on labelled rows;
6. with ``--server``: the challenger in shadow on the live server, judged from its prediction log
   (:mod:`torchkiln.monitor.rollout`); rolled back past the error-rate, p99 or agreement gate. Then a canary:
   it answers ``canary_weight`` of the request keys until a sequential test of its failure rate decides,
   and is rolled back by itself when that test or its p99 says so;
7. promote: move ``champion``, ``POST /admin/reload`` and check every worker serves it; or reject. The
   traffic rule the canary changed goes back to what it was, whatever happened.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from torchkiln.artifacts.bundle import Bundle, load_bundle
from torchkiln.artifacts.predictor import Predictor
from torchkiln.core.config import RunConfig
from torchkiln.core.errors import ConfigError, KilnError, ServeError
from torchkiln.monitor.data_merge import MergedData, feedback_items, merge, scan_source
from torchkiln.monitor.decision import DecisionRecord, RetrainSettings, judge
from torchkiln.monitor.logged import NO_PAYLOADS, LoggedInputs, read_logged_inputs
from torchkiln.serve import registry
from torchkiln.tasks.base import load_config
from torchkiln.tasks.training import train_new_run

log = logging.getLogger("torchkiln.retrain")


@dataclass(frozen=True)
class RetrainResult:
    record: DecisionRecord
    path: Path | None  # decision.json; None for a dry run
    challenger_version: str | None


def retrain(
    config: str | Path,
    *,
    model: str,
    data: list[Path] | None = None,
    feedback_from: str | None = None,
    settings: RetrainSettings | None = None,
    tracking_uri: str | None = None,
    server: str | None = None,
    admin_token: str | None = None,
    drift_report: str | None = None,
    log_url: str | None = None,
    out_dir: Path | None = None,
    device: str = "auto",
    dry_run: bool = False,
) -> RetrainResult:
    """Train a challenger for registered model ``model`` on new labelled data; promote it only on evidence.

    Args:
        config: the training config the champion was trained with (its ``data.path`` is the original data).
        model: the registered model whose ``champion`` alias is challenged.
        data: new labelled data: image folders or CSV manifests (path,label[,split]), or for a text
            model CSVs of texts (the config's text/label columns, or text,label[,split]).
        feedback_from: a prediction log URL: its feedback-labelled inputs (kept bodies only) are new data,
            and its last ``settings.replay_items`` requests are replayed through both models.
        settings: the gates (:class:`RetrainSettings`).
        tracking_uri: the registry (default: the config's runs_dir/mlflow.db).
        server, admin_token: a running ``kiln serve`` (see :mod:`torchkiln.monitor.live` for how it must
            serve the model): the challenger goes into shadow there before a promotion reloads it.
        log_url: that server's prediction log (default: ``feedback_from``), where the shadow is judged.
        drift_report: a ``kiln monitor report`` JSON that set this off, recorded in the decision.
        out_dir: where the merged data and decision.json go (default ``RUNS_DIR/retrain/NAME/<time>``).
        dry_run: print the plan and the gates; train, register and write nothing.

    Returns:
        The decision record, where it was written, and the challenger's registered version (if any).

    Raises:
        ConfigError, DataError: a bad config or data, before any compute.
        ServeError: no champion, a registry failure, or a server that did not take the new champion.

    Example:
        >>> retrain("kiln.yaml", model="digits", data=[Path("new_digits/")]).record.outcome
        'promoted'
    """
    settings = settings or RetrainSettings()
    log_url = log_url or feedback_from
    if server and not log_url:
        raise ConfigError(
            "--server needs the server's prediction log to judge the shadow phase: give --log-url URL (the "
            "server's log_url) or --feedback-from URL."
        )
    cfg = load_config(config)
    uri = registry.registry_uri(tracking_uri, runs_dir=cfg.runs_dir)
    champion = registry.resolve_model_uri(f"models:/{model}@champion", tracking_uri=uri)
    champ = load_bundle(champion.path)
    if champ.task.kind != cfg.task.kind:
        raise ConfigError(
            f"The champion of '{model}' (version {champion.version}) is a {champ.task.kind} model; {config} "
            f"trains {cfg.task.kind}. Give the config the champion was trained with."
        )
    stamp = datetime.now(UTC)
    out_dir = out_dir or Path(cfg.runs_dir) / "retrain" / model / stamp.strftime("%Y%m%d-%H%M%S")
    record = DecisionRecord(
        model=model,
        outcome="planned",
        reason="dry run: nothing was trained, registered or changed",
        settings=settings.model_dump(),
        champion={"version": champion.version, "uri": f"models:/{model}/{champion.version}"},
        challenger={},
        data={"sources": [str(p) for p in data or []] + ([feedback_from] if feedback_from else [])},
        drift_report=drift_report,
        created=stamp.isoformat(),
    )
    if dry_run:
        return RetrainResult(record, None, None)
    logged = _logged(feedback_from, model, champ, settings, has_data=bool(data))
    merged = _merge_step(cfg, data or [], logged, out_dir, settings, champ)
    record.data |= {
        "merged": str(merged.manifest),
        "counts": merged.counts,
        "data_sha256": merged.data_sha256,
        "test_sha256": merged.test_sha256,
        "test_items": len(merged.test_items),
        "policy": "new data: test_fraction fresh test, val_fraction val, rest train; original "
        "train+val kept, original test left out",
    }
    run_dir = _train_step(cfg, champion.path, merged, settings)
    record.challenger = {
        "run_dir": str(run_dir),
        "init_from": None if settings.from_scratch else str(champion.path),
    }
    chall = load_bundle(run_dir / "bundle")
    verdict = _evaluate_step(record, champ, chall, merged, settings, device)
    version = None
    if verdict:
        info = registry.register_bundle(run_dir / "bundle", name=model, alias="challenger", tracking_uri=uri)
        version = info.version
        record.challenger["version"] = version
        log.info("step 4: registered the challenger as %s version %s (alias challenger)", model, version)
    if verdict and logged is not None:
        verdict = _replay_step(record, champ, chall, logged, settings, device)
        if not verdict:  # a rejected challenger keeps its version and record, not the alias
            registry.delete_alias(model, "challenger", tracking_uri=uri)
    at = None
    if server:  # HTTP and the server's routes are imported for a live rollout only
        from torchkiln.monitor import rollout

        at = rollout.Live(server, admin_token, log_url or "", model, uri)
    canary = None  # the traffic rule to restore once a canary changed it
    try:
        if verdict and at is not None:
            verdict = rollout.shadow_step(record, at, version, champion.version, settings)
            if verdict and settings.canary_weight > 0:
                canary = at.traffic()
                verdict = rollout.canary_step(record, at, version, champion.version, settings, canary)
                canary = canary if verdict else None  # a rejected canary has restored it already
        if verdict:
            _promote_step(record, model, version, settings, uri, server, admin_token)
    except KilnError as exc:  # a live step failed: the record says where, then the error goes on
        record.outcome, record.reason = "failed", f"{type(exc).__name__}: {exc}"
        raise
    finally:
        if canary is not None and at is not None:
            rollout.restore_traffic(record, at, canary)
        path = record.write(out_dir / "decision.json")
        log.info("decision: %s (%s); record %s", record.outcome, record.reason, path)
        _log_decision(record, path, version, run_dir, merged, champion.version, uri)
    return RetrainResult(record, path, version)


def _logged(
    url: str | None, model: str, champ: Bundle, settings: RetrainSettings, *, has_data: bool
) -> LoggedInputs | None:
    if url is None:
        return None
    logged = read_logged_inputs(url, model, champ.task, last=max(settings.replay_items, 1))
    labelled = sum(x.label is not None for x in logged.inputs)
    if not labelled and not has_data:
        raise ServeError(NO_PAYLOADS.format(log=url, model=model, last=logged.requests, what="retrain on"))
    log.info(
        "step 1: the log holds %d of the last %d requests with their bodies (%d labelled inputs)",
        logged.requests - logged.without_payload,
        logged.requests,
        labelled,
    )
    return logged


def _merge_step(
    cfg: RunConfig,
    data: list[Path],
    logged: LoggedInputs | None,
    out_dir: Path,
    settings: RetrainSettings,
    champ: Bundle,
) -> MergedData:
    new = {str(p): scan_source(Path(p)) for p in data}
    if logged is not None:
        labelled = [x for x in logged.inputs if x.label is not None]
        if labelled:
            new["feedback"] = feedback_items(labelled, out_dir / "feedback")
        else:
            log.warning("step 1: no feedback-labelled inputs with kept bodies in the log; using --data only")
    merged = merge(cfg, new, out_dir, settings, list(champ.meta.get("labels") or []))
    log.info(
        "step 1: merged data %s: %s; data sha256 %s, fresh test set %d items (sha256 %s)",
        merged.manifest,
        merged.counts,
        merged.data_sha256[:12],
        len(merged.test_items),
        merged.test_sha256[:12],
    )
    return merged


def _challenger_config(
    cfg: RunConfig, champion: Path, merged: MergedData, settings: RetrainSettings, classes: list[str]
) -> RunConfig:
    raw = cfg.model_dump(mode="json", exclude_unset=False)
    raw["data"] |= merged.data_overrides | {"classes": classes}
    if "limit_per_class" in raw["data"]:  # the merge applied it to the original data; new data stays whole
        raw["data"]["limit_per_class"] = None
    raw["name"] = f"{cfg.name}-challenger" if getattr(cfg, "name", None) else "challenger"
    if not settings.from_scratch:
        raw["model"]["init_from"] = str(champion)
    if settings.epochs is not None:
        raw["train"]["epochs"] = settings.epochs
    return load_config(raw)


def _train_step(cfg: RunConfig, champion: Path, merged: MergedData, settings: RetrainSettings) -> Path:
    classes = list(load_bundle(champion).meta.get("labels") or [])
    ccfg = _challenger_config(cfg, champion, merged, settings, classes)
    log.info(
        "step 2: training the challenger (%s)",
        "from scratch" if settings.from_scratch else f"fine-tuned from {champion}",
    )
    run_dir = train_new_run(ccfg)  # its prepare is training's own data validation, before any compute
    log.info("step 2: challenger run %s", run_dir)
    return run_dir


def _predict_labels(bundle: Bundle, inputs: list[Any], device: str) -> list[str]:
    predictor = Predictor(bundle, device=device)
    return [str(a["label"]) for a in predictor.predict(inputs, top_k=1)] if inputs else []


def _evaluate_step(
    record: DecisionRecord,
    champ: Bundle,
    chall: Bundle,
    merged: MergedData,
    settings: RetrainSettings,
    device: str,
) -> bool:
    inputs = [str(p) for p, _ in merged.test_items]
    truth = np.array([lab for _, lab in merged.test_items])
    a = np.array(_predict_labels(champ, inputs, device)) == truth
    b = np.array(_predict_labels(chall, inputs, device)) == truth
    verdict, test = judge(a, b, settings)
    record.champion["metrics"] = {"accuracy": float(a.mean()) if len(a) else None, "items": len(a)}
    record.challenger["metrics"] = {"accuracy": float(b.mean()) if len(b) else None, "items": len(b)}
    record.test = asdict(test) | {
        "gated_on": settings.test,
        "p_value": verdict.p_value,
        "accuracy_gain": verdict.accuracy_gain,
        "alpha": settings.alpha,
        "min_effect": settings.min_effect,
    }
    log.info("step 3: %s", verdict.reason)
    if not verdict.passed:
        record.outcome, record.reason = "rejected", f"offline gate: {verdict.reason}"
    return verdict.passed


def _replay_step(
    record: DecisionRecord,
    champ: Bundle,
    chall: Bundle,
    logged: LoggedInputs,
    settings: RetrainSettings,
    device: str,
) -> bool:
    inputs = [x.raw for x in logged.inputs]
    if not inputs:
        record.replay = {
            "requests": logged.requests,
            "inputs": 0,
            "note": "no kept request bodies in the window: nothing replayed",
        }
        log.warning("step 5: %s", record.replay["note"])
        return True
    champ_pred, chall_pred = _predict_labels(champ, inputs, device), _predict_labels(chall, inputs, device)
    agree = float(np.mean([x == y for x, y in zip(champ_pred, chall_pred, strict=True)]))
    labelled = [(i, x.label) for i, x in enumerate(logged.inputs) if x.label is not None]
    acc = {
        name: (float(np.mean([p[i] == lab for i, lab in labelled])) if labelled else None)
        for name, p in (("champion", champ_pred), ("challenger", chall_pred))
    }
    record.replay = {
        "requests": logged.requests,
        "without_payload": logged.without_payload,
        "undecodable": logged.undecodable,
        "inputs": len(inputs),
        "agreement": agree,
        "labelled": len(labelled),
        "accuracy_on_labelled": acc,
        "note": "labelled rows were also new training data unless held out as fresh test",
    }
    log.info(
        "step 5: replayed %d logged inputs: agreement with the champion %.3f; accuracy on %d labelled "
        "inputs: champion %s, challenger %s",
        len(inputs),
        agree,
        len(labelled),
        acc["champion"],
        acc["challenger"],
    )
    if agree < settings.min_replay_agreement:
        record.outcome = "rejected"
        record.reason = (
            f"replay gate: agreement {agree:.3f} with the champion on {len(inputs)} logged inputs "
            f"< min_replay_agreement {settings.min_replay_agreement}"
        )
        return False
    return True


def _promote_step(
    record: DecisionRecord,
    model: str,
    version: str | None,
    settings: RetrainSettings,
    uri: str,
    server: str | None,
    admin_token: str | None,
) -> None:
    assert version is not None
    if not settings.promote:
        record.outcome = "accepted"
        record.reason = "passed every gate; not promoted (promote: false): the challenger alias points at it"
        return
    previous = registry.promote(model, version, tracking_uri=uri)
    record.outcome = "promoted"
    record.reason = f"passed every gate; champion {previous} -> {version}"
    record.champion["replaced_by"] = version
    log.info("step 7: alias champion of %s: version %s -> %s", model, previous, version)
    if server:
        from torchkiln.monitor.live import reload_and_verify

        record.live = (record.live or {}) | {
            "promotion": reload_and_verify(server, admin_token, model, version)
        }
        log.info("step 7: %s reloaded: %s", server, record.live)


def _log_decision(
    record: DecisionRecord,
    path: Path,
    version: str | None,
    run_dir: Path,
    merged: MergedData,
    parent: str,
    uri: str,
) -> None:
    tags = {
        "torchkiln.retrain.outcome": record.outcome,
        "torchkiln.retrain.data_sha256": merged.data_sha256,
        "torchkiln.retrain.test_sha256": merged.test_sha256,
        "torchkiln.retrain.parent_version": parent,
    }
    params = {
        "p_value": record.test.get("p_value"),
        "alpha": record.settings["alpha"],
        "min_effect": record.settings["min_effect"],
        "challenger_run": str(run_dir),
        "champion_accuracy": record.champion.get("metrics", {}).get("accuracy"),
        "challenger_accuracy": record.challenger.get("metrics", {}).get("accuracy"),
    }
    train_run = None
    mlflow_json = run_dir / "mlflow.json"
    if mlflow_json.is_file():
        train_run = json.loads(mlflow_json.read_text(encoding="utf-8")).get("run_id")
    run_id = registry.log_decision(
        record.model,
        path,
        params=params,
        tags=tags,
        version=version,
        train_run_id=train_run,
        tracking_uri=uri,
    )
    log.info(
        "decision logged to MLflow run %s%s", run_id, f" and linked to version {version}" if version else ""
    )
