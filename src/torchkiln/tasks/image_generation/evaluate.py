"""``kiln evaluate`` for a GAN: FID, KID and precision/recall against the real-versus-real floor, sample
grids, and each sample's nearest training images (does the generator only copy?).

Fakes are drawn as the server draws them (image i from seed i), as many as the split holds and, for a
conditional generator, of the split's classes in the split's proportions. The floor is the same figures
for as many *real* training images against the split: what a perfect generator would score at this n.
"""

from __future__ import annotations

import base64
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch
from PIL import Image
from rich.table import Table

from torchkiln.components.html import render
from torchkiln.core.errors import DataError
from torchkiln.core.io import atomic_write_text
from torchkiln.tasks.base import validate
from torchkiln.tasks.image_generation.config import GenerationRunConfig
from torchkiln.tasks.image_generation.data import seeded_noise
from torchkiln.tasks.image_generation.train import generator_input, to_uint8

FIGURES = ("fid", "kid", "precision", "recall")
NEIGHBOURS, QUERIES = 6, 8  # the report's copy check: 8 samples, each beside its 6 nearest training images
MAX_ITEMS = 10_000


@dataclass(frozen=True)
class GenerationEvaluation:
    """What ``kiln evaluate`` measured on a generator; ``metrics_file`` holds all of it."""

    results: dict[str, Any]
    split: str
    report: Path
    metrics_file: Path
    notes: tuple[str, ...] = ()

    def summary(self) -> list[Any]:
        r = self.results
        if "model" not in r:
            return [f"{r['n']} images drawn; no quality figures (task.features: none). See {self.report}."]
        table = Table(title=f"{self.split} split: {r['n']} generated against {r['n']} real images")
        table.add_column("")
        for name in FIGURES:
            table.add_column(name.upper() if name in ("fid", "kid") else name, justify="right")
        for label, key in (("generator", "model"), ("real vs real (floor)", "real_vs_real")):
            table.add_row(label, *(f"{r[key][f]:.4g}" for f in FIGURES))
        copy, acc = r["copying"], r.get("class_accuracy")
        lines = []
        if acc:
            lines.append(
                f"The feature classifier names the class each image was drawn as for {acc['generated']:.1%} "
                f"of the generated images ({acc['real']:.1%} of the real ones)."
            )
        return [
            table,
            *lines,
            f"FID is {r['fid_ratio']:.2f}x the real-versus-real floor (features: {r['features']}).",
            f"Nearest training image: median distance {copy['fake_to_train']:.3g} from a generated image, "
            f"{copy['test_to_train']:.3g} from a held-out real one (ratio {copy['ratio']:.2f}; well under 1 "
            "would mean copying).",
        ]


def evaluate_generator(
    bundle: Any, *, split: str, out_dir: Path, device: torch.device
) -> GenerationEvaluation:
    """Draw as many images as ``split`` holds and score them; write ``metrics.json`` and ``report.html``.

    Raises:
        DataError: the split has no image.
    """
    cfg = cast(GenerationRunConfig, bundle.config)
    _, data = bundle.task.prepare(validate(cfg.model_dump(mode="json")), splits={split, "train"})
    real = data.splits[split]
    if not len(real):
        raise DataError(
            f"The {split} split of '{cfg.data.path}' has no image, so there is nothing to compare the "
            f"generated images with. Pick another split with --split, or give the data a {split} split."
        )
    n = min(len(real), MAX_ITEMS)
    g = torch.Generator().manual_seed(cfg.seed)
    pick = torch.randperm(len(real), generator=g)[:n].sort().values
    real_images, real_labels = real.images[pick], real.labels[pick]
    train = data.splits["train"]
    train_pick = torch.randperm(len(train), generator=g)[:n].sort().values
    model = bundle.model.to(device).eval()
    fakes = draw(model, cfg, real_labels, device)
    results: dict[str, Any] = {"split": split, "n": n, "features": cfg.task.features}
    neighbours: list[tuple[torch.Tensor, torch.Tensor]] = []
    if cfg.task.features != "none":
        results, neighbours = _quality(cfg, results, real_images, real_labels, fakes, train, train_pick)
    out_dir.mkdir(parents=True, exist_ok=True)
    metrics_file = out_dir / "metrics.json"
    atomic_write_text(metrics_file, json.dumps(results, indent=2))
    report = _report(out_dir, cfg, bundle, results, fakes, neighbours, data.classes, device)
    return GenerationEvaluation(results, split, report, metrics_file)


@torch.inference_mode()
def draw(
    model: torch.nn.Module, cfg: GenerationRunConfig, labels: torch.Tensor, device: torch.device
) -> torch.Tensor:
    """uint8 images from seeds 0..n-1, one per label (the label ignored when unconditional)."""
    k = cfg.label_classes
    parts = []
    for start in range(0, len(labels), 500):
        chunk = torch.arange(start, min(start + 500, len(labels)))
        z = seeded_noise(chunk.tolist(), cfg.task.latent_dim)
        x = generator_input(z, labels[chunk] if k else None, k)
        parts.append(to_uint8(model(x.to(device)).cpu()))
    return torch.cat(parts)


def _quality(cfg, results, real_images, real_labels, fakes, train, train_pick):
    from torchkiln.tasks.image_generation.quality import (
        extract,
        generative_quality,
        load_features,
        nearest_neighbours,
    )

    features = load_features(cfg.task.features)
    f_real, f_fake = extract(features, real_images), extract(features, fakes)
    f_train = extract(features, train.images)  # every training image: the copy check searches them all
    model = generative_quality(f_real, f_fake, seed=cfg.seed)
    floor = generative_quality(f_real, f_train[train_pick], seed=cfg.seed)
    d_fake, idx = nearest_neighbours(f_fake, f_train, k=NEIGHBOURS)
    d_test, _ = nearest_neighbours(f_real, f_train, k=1)
    fake_med, test_med = float(d_fake[:, 0].median()), float(d_test[:, 0].median())
    results = results | {
        "model": model,
        "real_vs_real": floor,
        "fid_ratio": model["fid"] / max(floor["fid"], 1e-12),
        "copying": {
            "fake_to_train": fake_med,
            "test_to_train": test_med,
            "ratio": fake_med / max(test_med, 1e-12),
        },
    }
    if cfg.task.conditional:
        results["class_accuracy"] = _class_accuracy(features, cfg, fakes, real_labels, real_images)
    shown = [(fakes[i], train.images[idx[i]]) for i in range(min(QUERIES, len(fakes)))]
    return results, shown


def _class_accuracy(features, cfg, fakes, labels, real_images) -> dict[str, float] | None:
    """How often the feature classifier names the class each image was drawn as, and, for scale, how often
    it names the split's real images' classes; None when it does not know the generator's classes."""
    classes = list(cfg.data.classes or [])
    if not set(classes) <= set(features.classes):
        return None
    to_theirs = torch.tensor([features.classes.index(c) for c in classes])
    wanted = to_theirs[labels]

    def accuracy(images: torch.Tensor) -> float:
        hits = sum(
            int((features.predict(chunk) == wanted[i : i + 500]).sum())
            for i, chunk in zip(range(0, len(images), 500), images.split(500), strict=True)
        )
        return hits / max(len(images), 1)

    return {"generated": accuracy(fakes), "real": accuracy(real_images)}


def _png_uri(images: torch.Tensor, nrow: int) -> str:
    from torchvision.utils import make_grid

    grid = make_grid(images, nrow=nrow, padding=2, pad_value=255).permute(1, 2, 0).numpy()
    buf = io.BytesIO()
    Image.fromarray(grid).resize((grid.shape[1] * 2, grid.shape[0] * 2), Image.Resampling.NEAREST).save(
        buf, "PNG"
    )
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _report(out_dir, cfg, bundle, results, fakes, neighbours, classes, device) -> Path:
    k = cfg.label_classes
    model = bundle.model
    if k:  # one row per class, 8 seeds each
        labels = torch.arange(k).repeat_interleave(8)
        grid = draw(model, cfg, labels, device)
        samples = [
            {
                "title": "Eight seeds per class, one class per row: " + ", ".join(classes),
                "uri": _png_uri(grid, 8),
            }
        ]
    else:
        samples = [{"title": "The first 64 seeds", "uri": _png_uri(fakes[:64], 8)}]
    rows = [{"uri": _png_uri(torch.cat([fake[None], near]), NEIGHBOURS + 1)} for fake, near in neighbours]
    figures = []
    if "model" in results:
        for name in FIGURES:
            figures.append(
                {
                    "name": name,
                    "model": f"{results['model'][name]:.4g}",
                    "floor": f"{results['real_vs_real'][name]:.4g}",
                }
            )
    html = render(
        "generation_report.html.j2",
        package="torchkiln.tasks.image_generation",
        title=f"{cfg.model.name} on {cfg.data.path}: {results['split']} split",
        results=results,
        figures=figures,
        samples=samples,
        neighbours=rows,
        settings={
            "bundle": str(bundle.path),
            "features": cfg.task.features,
            "conditional": cfg.task.conditional,
            "latent_dim": cfg.task.latent_dim,
            "images": results["n"],
        },
    )
    path = out_dir / "report.html"
    atomic_write_text(path, html)
    return path
