"""Served models: loading (bundle folders or registry URIs), A/B and shadow routing, and hot reload.

A :class:`Deployment` is one URL name (``/v1/models/{name}``) with a champion and optionally a
challenger. A reload loads the new version beside the old one, warms it up on the task's example
request, and only then swaps it in with one assignment on the event loop, so requests see either the
old model or the new one, never a half-loaded one. If the load fails the old one keeps serving.
"""

from __future__ import annotations

import asyncio
import gc
import hashlib
import itertools
import logging
import re
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from torchkiln.artifacts.predictor import Predictor, load_predictor
from torchkiln.core.errors import KilnError
from torchkiln.serve.batching import DynamicBatcher
from torchkiln.serve.live_signals import Signaller, signal_mode
from torchkiln.serve.metrics import ServeMetrics
from torchkiln.serve.settings import ModelSpec, ServeSettings
from torchkiln.serve.workers import (
    WATCH_INTERVAL_S,
    Agreement,
    Desired,
    Target,
    Traffic,
    WorkerSync,
    pinned_uri,
)
from torchkiln.tasks.base import RequestLimits, load_config

log = logging.getLogger("torchkiln.serve")
REGISTRY_SCHEME = "models:/"


def default_name(spec: ModelSpec) -> str:
    """The URL name: as given, else the registry model's name, else the bundle's run name (+ variant)."""
    if spec.name:
        return spec.name
    if spec.uri.startswith(REGISTRY_SCHEME):
        return spec.uri[len(REGISTRY_SCHEME) :].split("@")[0].split("/")[0]
    path = Path(spec.uri).resolve()
    if path.is_dir() and not (path / "config.yaml").is_file() and (path / "bundle").is_dir():
        path = path / "bundle"  # a run directory
    try:
        run_name = load_config(path / "config.yaml").run_name
    except KilnError:
        run_name = path.parent.name  # the load will report what is wrong with the bundle
    return model_name(run_name, path.name)


def model_name(run_name: str, bundle_dir: str) -> str:
    """``digits-cnn`` for a trained bundle, ``digits-cnn-onnx-int8`` for ``bundle-onnx-int8``."""
    suffix = bundle_dir.removeprefix("bundle-") if bundle_dir.startswith("bundle-") else ""
    slug = re.sub(r"[^a-z0-9]+", "-", f"{run_name}-{suffix}".lower()).strip("-")
    return slug[:63].rstrip("-") or "model"


@dataclass
class ServedModel:
    """One loaded model version with its own batcher (and so its own model thread)."""

    arm: str  # "champion" or "challenger"
    uri: str
    version: str
    predictor: Predictor
    batcher: DynamicBatcher
    loaded_at: datetime = field(default_factory=lambda: datetime.now(UTC))

    @property
    def task(self) -> Any:
        return self.predictor.bundle.task

    @property
    def runtime(self) -> str:
        return str(self.predictor.bundle.meta.get("runtime", "torch"))


@dataclass
class LoadedVersion:
    predictor: Predictor
    version: str
    signaller: Signaller


def load_version(uri: str, settings: ServeSettings, limits: RequestLimits) -> LoadedVersion:
    """Resolve ``uri``, load the bundle and run the task's example request once (blocking: call in a thread).

    Raises:
        KilnError: the URI does not resolve or the bundle is broken (BundleError, ServeError, ...).
    """
    if uri.startswith(REGISTRY_SCHEME):
        from torchkiln.serve.registry import resolve_model_uri

        resolved = resolve_model_uri(uri, tracking_uri=settings.registry_uri)
        predictor, version = load_predictor(resolved.path, device=settings.device), resolved.version
    else:
        predictor = load_predictor(uri, device=settings.device)
        version = predictor.version
    task = predictor.bundle.task
    example = task.request_schema.model_validate(task.example_request())
    raw = task.decode_request(example, limits=limits)
    signaller = Signaller(predictor, signal_mode(predictor))
    outputs, embeddings = signaller.forward(predictor.preprocess(raw), wanted=True)
    predictor.postprocess(outputs, raw=raw)
    if signaller.entries(outputs, embeddings) is None and signaller.mode is not None:
        # Logged already; this version serves, and logs no signals rather than failing on every batch.
        signaller.mode = None
    return LoadedVersion(predictor, version, signaller)


@dataclass(frozen=True)
class Work:
    """What one request hands the model thread besides its tensor."""

    top_k: int | None = None
    raw: Sequence[Any] = ()  # the decoded inputs: some answers need them (a forecast's timestamps)
    summarize: bool = False  # the prediction log wants summaries of the inputs
    signals: bool = False  # the prediction log wants the live drift signals (serve/live_signals.py)


@dataclass(frozen=True)
class Answer:
    predictions: list[dict[str, Any]]
    summaries: list[dict[str, Any]] | None  # task.summarize_inputs, when Work.summarize was set
    # Per input, the live drift signals, when Work.signals was set and the bundle has a reference.
    signals: list[dict[str, Any]] | None = None


def make_runner(signaller: Signaller):
    """The batch function for a predictor: one model call for all requests, then per-request answers.

    Input summaries and live drift signals for the prediction log are computed here too, once per batch
    rather than once per request: the fixed cost of a few small tensor ops is what makes them expensive,
    and this thread is not the event loop. The signals come from the same model call as the answers.
    """
    predictor = signaller.predictor

    def run(xs: Sequence[torch.Tensor], works: Sequence[Work]) -> list[Answer]:
        batch = predictor.collate(xs)
        wants_signals = any(w.signals for w in works)
        outputs, embeddings = signaller.forward(batch, wanted=wants_signals)  # (sum n, ...), (sum n, k)
        bounds = [0, *itertools.accumulate(len(x) for x in xs)]
        predictions: list[list[dict[str, Any]]] = [[] for _ in xs]
        for top_k in {w.top_k for w in works}:  # one postprocess call per distinct top_k, usually one
            mine = [i for i, w in enumerate(works) if w.top_k == top_k]
            raw = [r for i in mine for r in works[i].raw]
            done = predictor.postprocess(_rows(outputs, bounds, mine), top_k=top_k, raw=raw)
            for i, part in zip(mine, _split(done, [len(xs[i]) for i in mine]), strict=True):
                predictions[i] = part
        summaries: list[list[dict[str, Any]] | None] = [None] * len(xs)
        wanted = [i for i, w in enumerate(works) if w.summarize]
        if wanted:
            raw = [r for i in wanted for r in works[i].raw]
            done = predictor.summarize(raw, _rows(batch, bounds, wanted))
            for i, part in zip(wanted, _split(done, [len(xs[i]) for i in wanted]), strict=True):
                summaries[i] = part
        signals: list[list[dict[str, Any]] | None] = [None] * len(xs)
        entries = signaller.entries(outputs, embeddings) if wants_signals else None
        if entries is not None:
            for i, part in enumerate(_split(entries, [len(x) for x in xs])):
                signals[i] = part if works[i].signals else None
        return [Answer(p, s, g) for p, s, g in zip(predictions, summaries, signals, strict=True)]

    return run


def _rows(t: torch.Tensor, bounds: list[int], mine: list[int]) -> torch.Tensor:
    """The rows of requests ``mine`` (all of them without a copy)."""
    if len(mine) == len(bounds) - 1:
        return t
    return torch.cat([t[bounds[i] : bounds[i + 1]] for i in mine])


def _split(items: list[Any], sizes: list[int]) -> Iterator[list[Any]]:
    start = 0
    for n in sizes:
        yield items[start : start + n]
        start += n


class Deployment:
    """One served name: champion, optional challenger, traffic rule, and the last reload problem."""

    def __init__(self, name: str, spec: ModelSpec) -> None:
        self.name = name
        self.spec = spec
        self.models: dict[str, ServedModel] = {}  # arm -> model
        self.errors: dict[str, str] = {}  # arm -> the last load failure, cleared by a good load
        self.lock = asyncio.Lock()  # one reload at a time per deployment
        # The traffic rule: the settings' at start, changed at runtime by PUT /admin/models/NAME/traffic.
        self.rule = Traffic(spec.challenger_weight, spec.shadow)

    @property
    def arms(self) -> dict[str, str]:
        """arm -> URI to load."""
        out = {"champion": self.spec.uri}
        if self.spec.challenger:
            out["challenger"] = self.spec.challenger
        return out

    @property
    def ready(self) -> bool:
        return all(arm in self.models for arm in self.arms)

    def pick(self, key: str) -> ServedModel:
        """The model that answers this request key: sticky, because it hashes the key."""
        challenger = self.models.get("challenger")
        weight = self.rule.challenger_weight
        if challenger is not None and weight > 0:
            bucket = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") / 2**64
            if bucket < weight:
                return challenger
        return self.models["champion"]

    @property
    def shadow(self) -> ServedModel | None:
        return self.models.get("challenger") if self.rule.shadow else None

    def traffic(self) -> dict[str, float | bool]:
        w = self.rule.challenger_weight if self.spec.challenger else 0.0
        out: dict[str, float | bool] = {"champion": 1.0 - w}
        if self.spec.challenger:
            out |= {"challenger": w, "shadow": self.rule.shadow}
        return out


class ModelManager:
    """Loads, swaps and unloads every deployment of an app."""

    def __init__(
        self, settings: ServeSettings, metrics: ServeMetrics | None, sync: WorkerSync | None = None
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.sync = sync  # the other workers of this server, with --workers N
        self.limits = RequestLimits(max_items=settings.max_items, max_pixels=settings.max_image_pixels)
        self.deployments = {default_name(s): Deployment(default_name(s), s) for s in settings.models}
        self.loading_done = False
        self.generation = 0  # the last generation of the workers' desired.json this worker applied

    @property
    def ready(self) -> bool:
        return all(d.ready for d in self.deployments.values())

    async def load_all(self) -> None:
        """Load every model; a worker that starts after a reload loads the versions the others serve."""
        desired = self.sync.desired() if self.sync else Desired()
        self._apply_traffic(desired.traffic)
        await asyncio.gather(
            *(
                self.reload(d, force=True, targets=desired.targets.get(d.name))
                for d in self.deployments.values()
            )
        )
        self.loading_done = True
        self._report(desired.generation)
        # Move the startup objects (models, modules, schemas) out of the collector's generations: full
        # collections then stop walking them, which took tens of milliseconds off the p99 in bench/.
        gc.collect()
        gc.freeze()

    async def reload(
        self, dep: Deployment, *, force: bool, targets: dict[str, Target] | None = None
    ) -> dict[str, str]:
        """(Re)load each arm; with ``force=False`` only arms whose version changed. Returns arm -> outcome.

        ``targets`` (arm -> version and URI, from the other workers) replace the settings' URIs to load.
        """
        outcomes: dict[str, str] = {}
        async with dep.lock:
            for arm, uri in dep.arms.items():
                current = dep.models.get(arm)
                target = None if targets is None else targets.get(arm)
                if target is None and targets is not None and current is not None:
                    continue  # the other workers did not change this arm
                if target is not None:
                    if current is not None and current.version == target.version:
                        outcomes[arm] = f"unchanged ({current.version})"
                    else:
                        outcomes[arm] = await self._swap(dep, arm, uri, load_uri=target.uri)
                    continue
                if not force and current is not None:
                    try:
                        changed = await self._changed(uri, current.version)
                    except Exception as exc:  # the registry is down: keep serving, say so
                        dep.errors[arm] = f"checking {uri}: {type(exc).__name__}: {exc}"
                        outcomes[arm] = f"failed: {exc}"
                        continue
                    if not changed:
                        outcomes[arm] = f"unchanged ({current.version})"
                        continue
                outcomes[arm] = await self._swap(dep, arm, uri)
        return outcomes

    async def _changed(self, uri: str, version: str) -> bool:
        if not uri.startswith(REGISTRY_SCHEME) or "@" not in uri:
            return False  # a folder or a fixed version: only a forced reload reloads it
        from torchkiln.serve.registry import current_version

        name, alias = uri[len(REGISTRY_SCHEME) :].split("@", 1)
        latest = await asyncio.to_thread(
            current_version, name, alias, tracking_uri=self.settings.registry_uri
        )
        return latest != version

    async def _swap(self, dep: Deployment, arm: str, uri: str, *, load_uri: str | None = None) -> str:
        start = time.perf_counter()
        try:
            loaded = await asyncio.to_thread(load_version, load_uri or uri, self.settings, self.limits)
        except Exception as exc:  # any failure: keep the old model serving, report it
            message = f"{type(exc).__name__}: {exc}"
            when = datetime.now(UTC).isoformat(timespec="seconds")
            dep.errors[arm] = f"{when} loading {load_uri or uri}: {message}"
            if self.metrics is not None:
                self.metrics.reload_failures.labels(dep.name).inc()
            log.error(
                "Loading %s for '%s' (%s) failed; the previous version keeps serving: %s",
                load_uri or uri,
                dep.name,
                arm,
                message,
            )
            return f"failed: {message}"
        model = ServedModel(arm, uri, loaded.version, loaded.predictor, self._batcher(dep.name, arm, loaded))
        model.batcher.start()
        old = dep.models.get(arm)
        dep.models[arm] = model  # the atomic swap: the next request sees the new version
        dep.errors.pop(arm, None)
        if self.metrics is not None:
            if old is not None:
                # 0 first: with several workers the gauge lives in a shared file that remove() leaves as is.
                old_labels = (dep.name, arm, old.version, old.task.kind, old.runtime)
                self.metrics.model_info.labels(*old_labels).set(0)
                self.metrics.model_info.remove(*old_labels)
            self.metrics.model_info.labels(dep.name, arm, model.version, model.task.kind, model.runtime).set(
                1
            )
        if old is not None:
            asyncio.get_running_loop().create_task(old.batcher.stop(self.settings.shutdown_timeout_s))
        log.info(
            "'%s' %s now serves version %s (%s, loaded in %.2f s)",
            dep.name,
            arm,
            model.version,
            uri,
            time.perf_counter() - start,
        )
        return f"loaded {model.version}"

    def _batcher(self, name: str, arm: str, loaded: LoadedVersion) -> DynamicBatcher:
        metrics, version = self.metrics, loaded.version

        def on_batch(size: int, seconds: float) -> None:
            if metrics is not None:
                metrics.batch_size.labels(name, version).observe(size)
                metrics.model_seconds.labels(name, version).observe(seconds)

        s = self.settings
        return DynamicBatcher(
            make_runner(loaded.signaller),
            max_batch_size=s.max_batch_size,
            max_wait_s=s.max_wait_ms / 1000,
            max_queue=s.max_queue,
            name=f"{name}-{arm}",
            on_batch=on_batch,
        )

    async def reload_all(
        self, deps: Sequence[Deployment], *, force: bool, wait: bool = True
    ) -> tuple[dict[str, dict[str, str]], Agreement | None]:
        """Reload ``deps`` here and, with several workers, in every worker.

        Returns model -> arm -> outcome in this worker, and (with several workers, when ``wait``) how
        many workers serve the same versions once each has applied the reload.
        """
        if self.sync is None:
            outcomes = await asyncio.gather(*(self.reload(d, force=force) for d in deps))
            return {d.name: o for d, o in zip(deps, outcomes, strict=True)}, None
        async with self.sync.locked():
            outcomes = await asyncio.gather(*(self.reload(d, force=force) for d in deps))
            results = {d.name: o for d, o in zip(deps, outcomes, strict=True)}
            if not wait and not any(o.startswith("loaded") for arms in outcomes for o in arms.values()):
                return results, None  # a poll that found nothing new: nothing to tell the others
            targets = {
                d.name: {arm: Target(pinned_uri(m.uri, m.version), m.version) for arm, m in d.models.items()}
                for d in deps
            }
            generation = self.sync.publish(targets)
            self._report(generation)
        if not wait:
            return results, None
        return results, await self.sync.wait(generation, targets, self.settings.reload_timeout_s)

    async def watch(self) -> None:
        """Apply what another worker published, every 100 ms (with several workers)."""
        assert self.sync is not None
        while True:
            await asyncio.sleep(WATCH_INTERVAL_S)
            try:
                if not self.sync.changed():
                    continue
                desired = self.sync.desired()
                if desired.generation <= self.generation:
                    continue
                self._apply_traffic(desired.traffic)
                await asyncio.gather(
                    *(
                        self.reload(d, force=False, targets=desired.targets[name])
                        for name, d in self.deployments.items()
                        if name in desired.targets
                    )
                )
                self._report(desired.generation)
            except (OSError, ValueError, KeyError) as exc:  # keep watching: the next publication may be fine
                log.error("Reading the workers' shared state in %s failed: %s", self.sync.folder, exc)

    def _report(self, generation: int) -> None:
        self.generation = max(self.generation, generation)
        if self.sync is None:
            return
        served = {n: {arm: m.version for arm, m in d.models.items()} for n, d in self.deployments.items()}
        errors = {n: dict(d.errors) for n, d in self.deployments.items() if d.errors}
        self.sync.report(self.generation, served, errors, {n: d.rule for n, d in self.deployments.items()})

    def _apply_traffic(self, rules: dict[str, Traffic]) -> None:
        for name, rule in rules.items():
            if name in self.deployments:
                self.deployments[name].rule = rule

    async def set_traffic(self, dep: Deployment, rule: Traffic) -> Agreement | None:
        """Route ``dep``'s requests by ``rule`` here and, with several workers, in every worker.

        Returns (with several workers) how many workers apply the rule, and serve the versions this worker
        serves, once each has read it.
        """
        if self.sync is None:
            dep.rule = rule
            return None
        async with self.sync.locked():
            dep.rule = rule
            targets = {
                dep.name: {
                    arm: Target(pinned_uri(m.uri, m.version), m.version) for arm, m in dep.models.items()
                }
            }
            generation = self.sync.publish(targets, {dep.name: rule})
            self._report(generation)
        return await self.sync.wait(generation, targets, self.settings.reload_timeout_s, {dep.name: rule})

    async def poll(self) -> None:
        """Reload any arm whose registry alias moved, every ``registry_poll_s`` seconds (in every worker)."""
        while True:
            await asyncio.sleep(self.settings.registry_poll_s)
            await self.reload_all(list(self.deployments.values()), force=False, wait=False)

    async def stop(self) -> None:
        await asyncio.gather(
            *(
                m.batcher.stop(self.settings.shutdown_timeout_s)
                for d in self.deployments.values()
                for m in d.models.values()
            )
        )
