"""Chapter 1: tensors, autograd and the data pipeline, with the real PyTorch primitives.

Run: .venv/bin/python examples/ch1_tensors_autograd.py  (about 6 s on 2 CPU cores, measured in docs/learn.md)
Each section asserts what it teaches, so a broken concept fails the script. docs/learn.md maps the book's
sections to this file and to the kiln feature that does the same for real.
"""

from __future__ import annotations

import torch
from sklearn.datasets import load_digits
from torch.utils.data import DataLoader, Dataset, TensorDataset
from torchvision.transforms import v2

torch.manual_seed(0)


def environment() -> torch.device:
    """Sections 1.1-1.3: what this machine gives PyTorch. `kiln env` prints the same and more."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")  # pick once, use everywhere
    print(f"torch {torch.__version__}, cuda available: {torch.cuda.is_available()}, using {device}")
    return device


def tensors(device: torch.device) -> None:
    """Section 1.4: create, reshape, dtype and device, broadcasting."""
    a = torch.tensor([1, 2, 3])  # from data: dtype inferred (int64)
    b = torch.ones((2, 3))  # float32 by default
    assert (a.dtype, b.dtype, b.shape) == (torch.int64, torch.float32, (2, 3))
    assert (a + b).dtype == torch.float32  # int + float promotes to float

    m = torch.arange(9).reshape(3, 3)  # (3, 3)
    assert m.view(9).data_ptr() == m.data_ptr()  # view/reshape of a contiguous tensor: no copy
    assert not m.T.is_contiguous()  # a transpose only swaps strides; .contiguous() would copy
    assert torch.equal(m @ m.T, torch.matmul(m, m.T)) and (m + 5)[0, 0] == 5

    # Broadcasting: sizes are aligned from the right; a size-1 (or missing) axis is stretched.
    col = torch.arange(3.0).reshape(3, 1)  # (3, 1)
    row = torch.arange(4.0)  # (4,) -> (1, 4)
    grid = col + row  # (3, 4)
    assert grid.shape == (3, 4) and torch.equal(grid, col.expand(3, 4) + row.expand(3, 4))

    # NumPy shares memory with a CPU tensor: changing one changes the other.
    n = b.numpy()
    n[0, 0] = 7.0
    assert b[0, 0] == 7.0

    # Common mistake: mixing devices. Every operand must be on the same device.
    x = torch.randn(3, device=device)
    if device.type == "cuda":
        try:
            _ = x + torch.randn(3)  # cuda + cpu
            raise AssertionError("mixing devices should fail")
        except RuntimeError:
            pass
    assert (x + torch.randn(3).to(device)).device.type == device.type
    print("tensors: shapes, dtypes, views, broadcasting and devices behave as described")


def autograd() -> None:
    """Section 1.5: autograd builds a graph as you compute; .backward() walks it with the chain rule."""
    x = torch.tensor(2.0, requires_grad=True)
    y = x**2 + 3 * x
    y.backward()
    assert x.grad == 7.0  # dy/dx = 2x + 3 = 7 at x = 2

    # The gradient of a vector function matches a central finite difference, entry by entry.
    # float64: the finite difference's own rounding error would swamp the comparison in float32.
    A = torch.randn(5, 4, dtype=torch.float64)
    w = torch.randn(4, dtype=torch.float64, requires_grad=True)

    def f(v: torch.Tensor) -> torch.Tensor:
        return torch.tanh(A @ v).pow(2).sum()  # R^4 -> R

    f(w).backward()
    eps, numeric = 1e-6, torch.zeros(4, dtype=torch.float64)
    with torch.no_grad():  # no graph needed for the probes
        for i in range(4):
            step = torch.zeros(4, dtype=torch.float64)
            step[i] = eps
            numeric[i] = (f(w + step) - f(w - step)) / (2 * eps)
    gap = (w.grad - numeric).abs().max().item()
    assert gap < 1e-8, (w.grad, numeric)
    assert torch.autograd.gradcheck(f, (w,))  # PyTorch's own finite-difference check

    # Pitfall: the graph is freed after backward; a second backward needs retain_graph=True.
    z = (w * 2).sum()
    z.backward(retain_graph=True)
    z.backward()  # fine: the graph was kept once
    try:
        z.backward()
        raise AssertionError("a third backward on a freed graph should fail")
    except RuntimeError:
        pass
    # Gradients accumulate (+=) across backward calls, which is why training loops call zero_grad().
    w.grad = None
    (w * 2).sum().backward()
    (w * 2).sum().backward()
    assert torch.equal(w.grad, torch.full((4,), 4.0, dtype=torch.float64))
    assert not w.detach().requires_grad  # .detach(): the same data, outside the graph
    print(f"autograd: dy/dx = {x.grad.item()}; the gradient matches a finite difference to {gap:.0e}")


class Digits(Dataset):
    """Section 1.6: a Dataset is __len__ + __getitem__; the transform runs per item, on access."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform: v2.Transform) -> None:
        self.images, self.labels, self.transform = images, labels, transform  # (N, 1, 8, 8) uint8

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.transform(self.images[i]), int(self.labels[i])


def data_pipeline() -> None:
    """Section 1.6: TensorDataset, a custom Dataset with transforms, and a DataLoader that batches."""
    features, labels = torch.rand((100, 10)), torch.randint(0, 2, (100,))
    loader = DataLoader(TensorDataset(features, labels), batch_size=8, shuffle=True)
    sizes = [len(xb) for xb, _ in loader]
    assert sum(sizes) == 100 and sizes[-1] == 4  # 12 full batches and a short last one

    digits = load_digits()  # 1,797 real 8x8 handwritten digits, values 0..16
    images = torch.tensor(digits.images * 255 / 16, dtype=torch.uint8).unsqueeze(1)  # (N, 1, 8, 8)
    labels = torch.tensor(digits.target)
    train = torch.arange(len(images)) % 5 != 0  # 80 % train; statistics come from train only
    to_float = v2.Compose(
        [
            v2.Resize((16, 16), antialias=True),  # (1, 8, 8) -> (1, 16, 16)
            v2.ToDtype(torch.float32, scale=True),  # uint8 0..255 -> float 0..1
        ]
    )
    seen = to_float(images[train])  # v2 transforms take a batch too: (1437, 1, 16, 16)
    mean, std = seen.mean().item(), seen.std().item()  # of the images as the model will see them
    transform = v2.Compose([to_float, v2.Normalize(mean=[mean], std=[std])])
    ds = Digits(images[train], labels[train], transform)
    x0, y0 = ds[0]
    assert x0.shape == (1, 16, 16) and x0.dtype == torch.float32 and isinstance(y0, int)

    # A seeded generator makes the shuffle order repeat: same seed, same batches.
    def first_labels(seed: int) -> list[int]:
        g = torch.Generator().manual_seed(seed)
        return next(iter(DataLoader(ds, batch_size=32, shuffle=True, generator=g)))[1].tolist()

    assert first_labels(1) == first_labels(1) != first_labels(2)
    xb = torch.cat([xb for xb, _ in DataLoader(ds, batch_size=256)])  # (1437, 1, 16, 16)
    assert abs(xb.mean()) < 0.05 and abs(xb.std() - 1) < 0.1, (xb.mean(), xb.std())  # normalized
    print(
        f"data: {len(ds)} train digits, batches of (32, 1, 16, 16), normalized mean {xb.mean():+.3f} std "
        f"{xb.std():.3f}"
    )


if __name__ == "__main__":
    tensors(environment())
    autograd()
    data_pipeline()
    # The same in torchkiln: the data section of a config, resolved (classes, size, train-only mean/std).
    print("kiln equivalent: kiln config show examples/fashion-mnist.yaml")
