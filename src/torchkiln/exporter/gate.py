"""The parity gate and the notes: what a variant must meet, and what the measurements mean."""

from __future__ import annotations

from dataclasses import dataclass, field

from torchkiln.exporter.prune import PruneResult
from torchkiln.tasks.base import PrimaryMetric

BENCH_BATCHES = (1, 32)


@dataclass
class Row:
    """One candidate model, measured.

    ``params`` counts the learned parameters of the network (``model.parameters()`` of the PyTorch
    model a row runs or was exported from): export and int8 store them differently but add or remove
    none, so only pruning changes it. ``stored_values`` counts the numbers the model file holds: for
    PyTorch the parameters and buffers (BatchNorm statistics, the input scale and shift); for ONNX the
    graph's initializers, which are the weights after BatchNorm is folded into the convolutions, the
    input scale and shift, shape constants, and for int8 the quantization scales, zero points and
    int32 biases. That is why it moves between variants of one network while ``params`` does not.
    """

    name: str
    runtime: str
    file_bytes: int
    params: int
    stored_values: int
    metric: float
    max_abs_diff: float | None  # vs the model this one was converted from (None for the baseline)
    agreement: float | None  # fraction of equal argmax predictions vs the baseline
    latency: dict[str, dict[str, float]] = field(default_factory=dict)  # batch size -> timings
    slower_than_eager: list[int] = field(default_factory=list)  # batch sizes where p50 > SLOWER x eager's


@dataclass(frozen=True)
class Check:
    name: str
    passed: bool
    value: float
    limit: float
    detail: str


def numeric_check(row: Row, tolerance: float, largest: float) -> Check:
    """ONNX fp32 must reproduce the eager outputs: max |Δ| <= ``tolerance`` x max(1, ``largest``).

    ``largest`` is the largest |output| of the eager model. fp32 keeps about 7 significant digits,
    so a network whose logits reach 7 carries 7x the absolute rounding error of one whose logits
    stay below 1; below 1 the limit is absolute.
    """
    diff = row.max_abs_diff or 0.0
    limit = tolerance * max(1.0, largest)
    scaled = f" = {tolerance:.0e} x largest |output| {largest:.2f}" if largest > 1 else ""
    return Check(
        "numerical parity",
        diff <= limit,
        diff,
        limit,
        f"max |Δ| between eager and ONNX fp32 outputs over the held-out split: {diff:.2e} "
        f"(limit {limit:.2e}{scaled})",
    )


def metric_check(pm: PrimaryMetric, base: Row, final: Row, *, budget: float, split: str) -> Check:
    """The variant may lose at most ``budget`` metric units against the original."""
    lost = (base.metric - final.metric) if pm.higher_is_better else (final.metric - base.metric)
    verdict = "" if lost <= budget else f"; missed by {lost - budget:.2f} {pm.unit}"
    return Check(
        f"{pm.name} parity",
        lost <= budget,
        lost,
        budget,
        f"{pm.name} on the {split} split: {base.metric:.2f} -> {final.metric:.2f}, "
        f"{lost:.2f} {pm.unit} lost (budget {budget:g}){verdict}",
    )


SLOWER = 1.05  # a p50 within 5 % is measurement noise on a shared machine, not "slower"


def slower_batches(eager: Row, row: Row) -> list[int]:
    """The batch sizes at which ``row``'s p50 latency is above ``SLOWER`` x the eager model's."""
    return [
        b for b in BENCH_BATCHES if row.latency[str(b)]["p50_ms"] > SLOWER * eager.latency[str(b)]["p50_ms"]
    ]


def eager_notes(rows: list[Row]) -> list[str]:
    """Say which variants are slower than the eager PyTorch model (``rows[0]``), and at which batch size."""
    eager, notes = rows[0], []
    for row in rows[1:]:
        if not row.slower_than_eager:
            continue
        p50 = {b: (row.latency[str(b)]["p50_ms"], eager.latency[str(b)]["p50_ms"]) for b in BENCH_BATCHES}
        where = " and ".join(
            f"batch {b} (p50 {p50[b][0]:.3f} ms vs {p50[b][1]:.3f} ms)" for b in row.slower_than_eager
        )
        notes.append(
            f"{row.name} is slower than eager PyTorch on this CPU at {where}. At that batch size the "
            f"original bundle serves faster; keep the variant only for what else it brings, such as a "
            f"smaller file."
        )
    return notes


def int8_notes(fp32: Row, int8: Row) -> list[str]:
    """Say where int8 is slower than fp32 ONNX (it happens: thin or depthwise convolutions, no VNNI)."""
    notes = []
    for b in BENCH_BATCHES:
        f, q = fp32.latency[str(b)]["p50_ms"], int8.latency[str(b)]["p50_ms"]
        if q > SLOWER * f:
            notes.append(
                f"int8 is slower than fp32 ONNX on this CPU at batch {b} (p50 {q:.3f} ms vs {f:.3f} ms). "
                f"Recommendation: serve the fp32 ONNX variant (kiln export BUNDLE --format onnx) unless the "
                f"{fp32.file_bytes / max(int8.file_bytes, 1):.1f}x smaller file matters more."
            )
    return notes


def prune_notes(pruned: PruneResult, row: Row) -> list[str]:
    if pruned.method == "l1-structured":
        return [
            f"structured pruning removed {pruned.channel_sparsity:.1%} of the output channels: "
            f"{pruned.params_before:,} -> {pruned.params_after:,} parameters "
            f"({pruned.params_after / pruned.params_before:.1%} kept)."
        ]
    return [
        f"unstructured pruning zeroed {pruned.weight_sparsity:.1%} of the Conv/Linear weights, but dense "
        f"kernels still multiply the zeros: the file ({row.file_bytes:,} bytes) and the latency stay "
        f"about the same. Use --prune-method l1-structured to shrink the model, or --quantize to shrink "
        f"the file."
    ]
