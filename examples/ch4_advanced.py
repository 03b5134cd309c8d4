"""Chapter 4: attention, a custom Dataset, data-parallel sharding, schedulers, mixed precision, pruning,
ONNX export, int8 quantization, and the case studies (a GAN, a detector, style transfer's Gram matrix).

Run: .venv/bin/python examples/ch4_advanced.py  (about 15 s on 2 CPU cores, measured in docs/learn.md)
Real data (scikit-learn's 8x8 digits, written out as PNG files), nothing downloaded. Each section asserts
what it teaches; docs/learn.md maps the book's sections to this file and to kiln's features.
"""

from __future__ import annotations

import logging
import math
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
import torch.nn.functional as F
from onnxruntime.quantization import quantize_dynamic
from PIL import Image
from sklearn.datasets import load_digits
from torch import nn
from torch.nn.utils import prune
from torch.optim.lr_scheduler import OneCycleLR, StepLR
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from torchvision.models.detection import fasterrcnn_mobilenet_v3_large_320_fpn
from torchvision.ops import box_iou

from torchkiln.engine.precision import cpu_has_fast_bf16

torch.manual_seed(0)


def attention() -> None:
    """Section 4.1: softmax(Q K^T / sqrt(d)) V by hand equals PyTorch's fused kernel and multi-head layer."""
    q, k, v = torch.randn(3, 2, 4, 5, 8).unbind(0)  # each (B=2, heads=4, T=5, d=8)
    scores = q @ k.transpose(-2, -1) / math.sqrt(8)  # (B, heads, T, T): how much each query wants each key
    assert torch.allclose(scores.softmax(-1) @ v, F.scaled_dot_product_attention(q, k, v), atol=1e-6)
    causal = scores.masked_fill(torch.ones(5, 5).triu(1).bool(), float("-inf"))  # no peeking ahead
    assert torch.allclose(
        causal.softmax(-1) @ v, F.scaled_dot_product_attention(q, k, v, is_causal=True), atol=1e-6
    )
    mha = nn.MultiheadAttention(embed_dim=32, num_heads=4, batch_first=True)
    x = torch.randn(2, 5, 32)  # (B, T, C)
    heads = (x @ mha.in_proj_weight.T + mha.in_proj_bias).reshape(2, 5, 3, 4, 8).permute(2, 0, 3, 1, 4)
    out = F.scaled_dot_product_attention(*heads).transpose(1, 2).reshape(2, 5, 32)  # heads back to C
    assert torch.allclose(mha.out_proj(out), mha(x, x, x)[0], atol=1e-5)  # that is all a MHA layer does


class PngDigits(Dataset):
    """Section 4.2: a Dataset over files in ``root/<label>/*.png`` that checks them all up front."""

    def __init__(self, root: Path) -> None:
        self.items = sorted((p, int(p.parent.name)) for p in root.glob("*/*.png"))
        for path, _ in self.items:  # fail now, with the file's name, not in the middle of epoch 3
            try:
                with Image.open(path) as im:
                    im.verify()
            except Exception as e:
                raise ValueError(f"{path} is not a readable PNG ({e}); delete or replace it") from None

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        path, label = self.items[i]
        pixels = torch.from_numpy(np.asarray(Image.open(path), dtype=np.float32) / 255)  # (8, 8)
        return pixels.flatten(), label  # (64,), int


def write_digits(root: Path) -> PngDigits:
    digits = load_digits()
    for i, (img, label) in enumerate(zip(digits.images, digits.target, strict=True)):
        (root / str(label)).mkdir(parents=True, exist_ok=True)
        Image.fromarray((img * 255 / 16).astype(np.uint8)).save(root / str(label) / f"{i:04d}.png")
    (root / "3" / "broken.png").write_bytes(b"not a png")
    try:
        PngDigits(root)
        raise AssertionError("a broken file should be refused when the Dataset is built")
    except ValueError as e:
        assert "broken.png is not a readable PNG" in str(e)
    (root / "3" / "broken.png").unlink()
    ds = PngDigits(root)
    x0, y0 = ds[0]  # the book's tip: check one item's shape and type before training
    assert x0.shape == (64,) and x0.dtype == torch.float32 and y0 == 0 and len(ds) == 1797
    return ds


def data_parallel_shards(ds: PngDigits) -> None:
    """Section 4.3: under DDP each process reads its own shard (DistributedSampler) and gradients are
    averaged after backward. No process group is started here: kiln train --nproc 2 runs the real thing."""
    shards = [list(DistributedSampler(ds, num_replicas=2, rank=r, shuffle=True, seed=0)) for r in (0, 1)]
    assert len(shards[0]) == len(shards[1]) == 899 and set(shards[0]) | set(shards[1]) == set(range(len(ds)))
    # 1,797 items do not split evenly: the sampler repeats one, so each rank runs the same number of steps.
    # A validation metric would count it twice; torchkiln's ShardedBatches slices batches without repeats.
    assert len(set(shards[0]) & set(shards[1])) == 1


def train_mlp(loader: DataLoader, epochs: int) -> tuple[nn.Module, list[float], str]:
    """Section 4.4: one-cycle learning rate, and autocast where the hardware has a fast low precision."""
    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    scheduler = OneCycleLR(optimizer, max_lr=1e-2, total_steps=epochs * len(loader))
    # bf16 autocast on a CPU only with AMX/AVX512-BF16 (torchkiln's own check); elsewhere bf16 is emulated
    # and much slower than fp32. On CUDA it would be bf16, or fp16 with a torch.amp.GradScaler.
    amp = torch.bfloat16 if cpu_has_fast_bf16() else None
    losses = []
    for _ in range(epochs):
        total = 0.0
        for xb, yb in loader:
            with torch.autocast("cpu", dtype=amp or torch.float32, enabled=amp is not None):
                logits = model(xb)  # (B, 10), computed in bf16 under autocast
                loss = F.cross_entropy(logits, yb)  # autocast keeps losses in fp32
            assert logits.dtype == (amp or torch.float32) and loss.dtype == torch.float32
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()  # after optimizer.step(), once per batch for one-cycle
            total += loss.item()
        losses.append(total / len(loader))
    return model.eval(), losses, "bf16 autocast" if amp else "fp32 (this CPU's bf16 is emulated)"


def schedules() -> None:
    sgd = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
    step = StepLR(sgd, step_size=2, gamma=0.5)
    lrs = []
    for _ in range(6):
        lrs.append(sgd.param_groups[0]["lr"])
        sgd.step()
        step.step()
    assert lrs == [0.1, 0.1, 0.05, 0.05, 0.025, 0.025]


def compress(model: nn.Module, x: torch.Tensor, y: torch.Tensor, tmp: Path) -> str:
    """Section 4.5: prune 30 % of a layer, export to ONNX, run it in ONNX Runtime, quantize it to int8."""
    acc = (model(x).argmax(1) == y).float().mean().item()
    prune.l1_unstructured(model[0], name="weight", amount=0.3)  # a mask over the smallest |w|
    prune.remove(model[0], "weight")  # bake the mask into the weight
    w = model[0].weight
    assert (w == 0).sum() == round(0.3 * w.numel())  # 2,458 of 8,192 weights are now exactly 0
    pruned_acc = (model(x).argmax(1) == y).float().mean().item()
    assert pruned_acc > acc - 0.02, (acc, pruned_acc)
    onnx_path, int8_path = tmp / "mlp.onnx", tmp / "mlp-int8.onnx"
    torch.onnx.export(
        model,
        (x[:2],),
        onnx_path,
        dynamo=True,
        input_names=["x"],
        output_names=["logits"],
        dynamic_shapes=({0: torch.export.Dim("batch")},),
        external_data=False,
        verbose=False,
    )
    session = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
    got = session.run(None, {"x": x.numpy()})[0]  # a batch of 360, not the example's 2
    with torch.no_grad():
        want = model(x).numpy()
    assert np.abs(got - want).max() < 1e-4
    # Dynamic int8: weights stored as int8, activations quantized on the fly (what kiln export does for
    # MLPs and text models). ONNX Runtime, because torch.ao's eager quantization is deprecated in 2.14.
    logging.disable(logging.WARNING)  # its tip (shape pre-processing first) is for CNNs, not this MLP
    quantize_dynamic(onnx_path, int8_path)
    logging.disable(logging.NOTSET)
    q = ort.InferenceSession(int8_path, providers=["CPUExecutionProvider"]).run(None, {"x": x.numpy()})[0]
    small = int8_path.stat().st_size / onnx_path.stat().st_size
    agree = (q.argmax(1) == want.argmax(1)).mean()
    assert small < 0.4 and np.abs(q - want).max() < 0.1 * np.abs(want).max() and agree > 0.97
    return (
        f"pruned 30 %: accuracy {acc:.3f} -> {pruned_acc:.3f}; ONNX Runtime = PyTorch (max |diff| "
        f"{np.abs(got - want).max():.0e}); int8 file {small:.0%} of fp32, {agree:.1%} same answers"
    )


def gan_steps(steps: int = 400) -> tuple[float, float]:
    """Section 4.6 B: a generator learns N(4, 1.25) from noise by fooling a discriminator."""
    g = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 1))
    d = nn.Sequential(nn.Linear(1, 32), nn.LeakyReLU(0.2), nn.Linear(32, 1))
    opt_g, opt_d = (torch.optim.Adam(m.parameters(), lr=2e-3, betas=(0.5, 0.999)) for m in (g, d))
    bce, ones, zeros = nn.BCEWithLogitsLoss(), torch.ones(64, 1), torch.zeros(64, 1)
    for _ in range(steps):
        real, fake = 4 + 1.25 * torch.randn(64, 1), g(torch.randn(64, 8))
        d_loss = bce(d(real), ones) + bce(d(fake.detach()), zeros)  # real_loss + fake_loss; G not updated
        opt_d.zero_grad()
        d_loss.backward()
        opt_d.step()
        g_loss = bce(d(fake), ones)  # the generator wants "real" from the discriminator
        opt_g.zero_grad()
        g_loss.backward()
        opt_g.step()
    with torch.no_grad():
        sample = g(torch.randn(2000, 8))
    return sample.mean().item(), sample.std().item()


def detection_and_style() -> None:
    """Section 4.6 C and A: a detector's two modes, IoU, and style transfer's Gram matrix."""
    model = fasterrcnn_mobilenet_v3_large_320_fpn(weights=None, weights_backbone=None, num_classes=3)
    images = [torch.rand(3, 160, 160)]
    targets = [{"boxes": torch.tensor([[20.0, 30.0, 90.0, 120.0]]), "labels": torch.tensor([1])}]
    losses = model.train()(images, targets)  # train mode: a dict of losses (classifier, boxes, RPN)
    assert set(losses) == {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"}
    with torch.no_grad():
        out = model.eval()(images)[0]  # eval mode: boxes (xmin, ymin, xmax, ymax), labels, scores
    assert set(out) == {"boxes", "labels", "scores"} and out["boxes"].shape[-1] == 4
    iou = box_iou(torch.tensor([[0.0, 0, 10, 10]]), torch.tensor([[5.0, 5, 15, 15]]))
    assert torch.isclose(iou, torch.tensor(25 / 175)).all()  # overlap 5x5, union 100 + 100 - 25
    feats = torch.randn(16, 20 * 20)  # (C, H*W) feature maps of one image
    gram = feats @ feats.T / feats.shape[1]  # (C, C): which channels fire together = "style"
    assert torch.allclose(gram, gram.T) and torch.linalg.eigvalsh(gram).min() > -1e-5


def main() -> None:
    attention()
    schedules()
    with tempfile.TemporaryDirectory() as tmp:
        ds = write_digits(Path(tmp) / "digits")
        data_parallel_shards(ds)
        train, test = torch.utils.data.random_split(ds, [1437, 360], torch.Generator().manual_seed(0))
        model, losses, precision = train_mlp(DataLoader(train, batch_size=64, shuffle=True), epochs=8)
        x = torch.stack([ds[i][0] for i in test.indices])  # (360, 64)
        y = torch.tensor([ds[i][1] for i in test.indices])
        assert losses[-1] < losses[0] / 4, losses
        print(
            f"attention, dataset, shards, schedules: checked; mlp in {precision}: loss {losses[0]:.3f} -> "
            f"{losses[-1]:.3f}"
        )
        with torch.no_grad():
            print(compress(model, x, y, Path(tmp)))
    mean, std = gan_steps()
    assert abs(mean - 4) < 1 and 0.5 < std < 2, (mean, std)
    detection_and_style()
    print(f"gan: samples have mean {mean:.2f}, std {std:.2f} (real: 4, 1.25); detector and Gram checked")
    print("kiln equivalent: kiln export $(ls -d runs/fashion-mnist-cnn/* | tail -1) --quantize dynamic")


if __name__ == "__main__":
    main()
