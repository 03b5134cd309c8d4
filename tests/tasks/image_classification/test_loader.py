"""Reproducible batches: order per epoch, resuming mid-epoch, and augmentation on its own RNG stream."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from pydantic import TypeAdapter

from torchkiln.components.augment import AugmentStep, build_augment
from torchkiln.components.batches import EpochBatchSampler
from torchkiln.core.errors import DataError
from torchkiln.tasks.image_classification.config import ImageDataConfig
from torchkiln.tasks.image_classification.data import SplitData, load_image_data
from torchkiln.tasks.image_classification.loader import BatchSet, data_device, make_loader

STEPS = TypeAdapter(list[AugmentStep])
ALL_STEPS = [
    {"name": "random_crop"},
    {"name": "random_resized_crop"},
    {"name": "horizontal_flip"},
    {"name": "vertical_flip"},
    {"name": "translate"},
    {"name": "rotation"},
    {"name": "color_jitter"},
    {"name": "trivial_augment"},
    {"name": "rand_augment"},
    {"name": "random_erasing"},
]


def random_split(n: int = 20, channels: int = 3, size: int = 16) -> SplitData:
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, channels, size, size), dtype=torch.uint8, generator=g)
    return SplitData(torch.arange(n) % 3, images=images)


def augment(*steps: dict):
    return build_augment(STEPS.validate_python(list(steps)))


# --- EpochBatchSampler --------------------------------------------------------------------------
def test_order_is_fixed_per_epoch_and_changes_between_epochs() -> None:
    a = EpochBatchSampler(50, 8, shuffle=True, seed=3)
    b = EpochBatchSampler(50, 8, shuffle=True, seed=3)
    first = a.order()
    assert torch.equal(first, b.order())
    assert sorted(first.tolist()) == list(range(50))
    a.set_epoch(1)
    assert not torch.equal(a.order(), first)
    a.set_epoch(0)
    assert torch.equal(a.order(), first)


def test_order_does_not_touch_the_global_rng() -> None:
    state = torch.get_rng_state()
    EpochBatchSampler(50, 8, shuffle=True, seed=3).order()
    assert torch.equal(torch.get_rng_state(), state)


def test_no_shuffle_keeps_the_data_order() -> None:
    sampler = EpochBatchSampler(10, 4, shuffle=False, seed=0)
    assert [idx.tolist() for _, _, idx in sampler] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]


def test_batches_carry_epoch_and_index_and_drop_last_is_honoured() -> None:
    keep = EpochBatchSampler(10, 4, shuffle=True, seed=0)
    drop = EpochBatchSampler(10, 4, shuffle=True, seed=0, drop_last=True)
    assert (len(keep), len(drop)) == (3, 2)
    drop.set_epoch(5)
    assert [(e, b, len(i)) for e, b, i in drop] == [(5, 0, 4), (5, 1, 4)]


def test_start_batch_skips_what_a_resumed_run_already_saw() -> None:
    sampler = EpochBatchSampler(40, 6, shuffle=True, seed=1)
    sampler.set_epoch(2)
    full = [(b, i.tolist()) for _, b, i in sampler]
    sampler.set_epoch(2, start_batch=3)
    assert [(b, i.tolist()) for _, b, i in sampler] == full[3:]


# --- BatchSet augmentation ----------------------------------------------------------------------
def test_augmentation_depends_only_on_epoch_and_batch() -> None:
    split = random_split()
    batches = BatchSet(
        split,
        size=16,
        channels=3,
        seed=7,
        augment=augment({"name": "random_crop"}, {"name": "horizontal_flip"}),
    )
    idx = torch.arange(8)
    x1, y1 = batches[(1, 2, idx)]
    # Whatever ran before (other batches, other draws from the global RNG) must not matter.
    batches[(0, 0, idx)]
    batches[(3, 1, idx)]
    torch.rand(1000)
    x2, y2 = batches[(1, 2, idx)]
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert not torch.equal(batches[(1, 3, idx)][0], x1)
    assert not torch.equal(batches[(2, 2, idx)][0], x1)
    assert not torch.equal(x1, split.images[idx])  # the augmentation did something


def test_augmentation_leaves_the_global_rng_alone() -> None:
    steps = ({"name": "rotation"}, {"name": "trivial_augment"})  # batched, then the per-image policy
    batches = BatchSet(random_split(), size=16, channels=3, seed=0, augment=augment(*steps))
    torch.manual_seed(123)
    state = torch.get_rng_state()
    batches[(0, 0, torch.arange(4))]
    assert torch.equal(torch.get_rng_state(), state)


def test_without_augmentation_batches_are_the_stored_images() -> None:
    split = random_split()
    idx = torch.tensor([3, 1, 4])
    x, y = BatchSet(split, size=16, channels=3, seed=0, augment=None)[(0, 0, idx)]
    assert torch.equal(x, split.images[idx]) and torch.equal(y, split.labels[idx])


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("step", ALL_STEPS, ids=[s["name"] for s in ALL_STEPS])
def test_every_augment_step_keeps_shape_and_dtype(step: dict, channels: int) -> None:
    split = random_split(n=4, channels=channels)
    batches = BatchSet(split, size=16, channels=channels, seed=0, augment=augment(step))
    x, _ = batches[(0, 0, torch.arange(4))]
    assert x.shape == (4, channels, 16, 16) and x.dtype == torch.uint8


def test_no_steps_means_no_augmentation() -> None:
    assert build_augment([]) is None


# --- make_loader --------------------------------------------------------------------------------
def test_loader_resumes_mid_epoch_with_the_same_batches() -> None:
    split = random_split(n=30)
    kwargs = {"batch_size": 4, "size": 16, "channels": 3, "shuffle": True, "seed": 5, "num_workers": 0}
    loader = make_loader(split, augment=augment({"name": "random_crop"}), **kwargs)
    loader.sampler.set_epoch(1)
    full = list(loader)
    assert len(full) == 7  # 30 // 4: the ragged last training batch is dropped
    resumed = make_loader(split, augment=augment({"name": "random_crop"}), **kwargs)
    resumed.sampler.set_epoch(1, start_batch=4)
    for (xa, ya), (xb, yb) in zip(full[4:], list(resumed), strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_evaluation_loader_keeps_every_item_in_order() -> None:
    split = random_split(n=10)
    loader = make_loader(split, batch_size=4, size=16, channels=3)
    assert loader.num_workers == 0  # in memory, no augmentation: workers would only add IPC
    ys = torch.cat([y for _, y in loader])
    assert torch.equal(ys, split.labels)


def test_loader_over_lazy_files(tiny_image_folder: Path) -> None:
    data = load_image_data(ImageDataConfig(path=str(tiny_image_folder), cache="none"), seed=0)
    eager = load_image_data(ImageDataConfig(path=str(tiny_image_folder)), seed=0)
    lazy_x = torch.cat(
        [x for x, _ in make_loader(data.splits["val"], batch_size=2, size=16, channels=3, num_workers=0)]
    )
    assert torch.equal(lazy_x, eager.splits["val"].images)


def test_lazy_files_get_the_same_clahe_as_in_memory_ones(tiny_image_folder: Path) -> None:
    settings = {"path": str(tiny_image_folder), "contrast": "clahe", "channels": 1}
    data = load_image_data(ImageDataConfig(**settings, cache="none"), seed=0)
    eager = load_image_data(ImageDataConfig(**settings), seed=0)
    plain = load_image_data(ImageDataConfig(path=str(tiny_image_folder), channels=1), seed=0)
    lazy_x = torch.cat(
        [x for x, _ in make_loader(data.splits["val"], batch_size=2, size=16, channels=1, num_workers=0)]
    )
    assert torch.equal(lazy_x, eager.splits["val"].images)
    assert not torch.equal(lazy_x, plain.splits["val"].images)  # CLAHE did change them


def test_a_split_with_neither_images_nor_paths_is_refused() -> None:
    with pytest.raises(DataError) as exc:
        SplitData(torch.arange(3))
    assert str(exc.value) == (
        "A SplitData of 3 label(s) holds neither images nor paths; expected the decoded images (a uint8 "
        "tensor (N, C, S, S)) or the image file paths, one per label. Fix: pass images= or paths= when "
        "making it."
    )


def test_a_balanced_sampler_draws_each_class_about_equally_and_reproducibly() -> None:
    from torchkiln.tasks.image_classification.data import SplitData

    labels = torch.tensor([0] * 90 + [1] * 10)  # 9:1
    split = SplitData(labels, images=torch.zeros(100, 1, 4, 4, dtype=torch.uint8))
    kwargs = {"batch_size": 10, "size": 4, "channels": 1, "shuffle": True, "seed": 3, "num_workers": 0}
    loader = make_loader(split, balanced=True, **kwargs)
    drawn = torch.cat([y for _, y in loader] + [y for _, y in loader])  # two epochs
    share = drawn.float().mean().item()  # of class 1
    assert 0.35 < share < 0.65, share
    again = torch.cat([y for _, y in make_loader(split, balanced=True, **kwargs)])
    assert torch.equal(again, drawn[: len(again)])  # the same draws from the same seed and epoch
    plain = torch.cat([y for _, y in make_loader(split, **kwargs)])
    assert plain.float().mean().item() == pytest.approx(0.1, abs=0.02)


# --- device-resident batches (data.on_device) --------------------------------------------------
CPU = torch.device("cpu")
LOADER_ARGS = {"batch_size": 4, "size": 16, "channels": 3, "shuffle": True, "seed": 5}


def test_resident_batches_equal_the_cpu_loaders_and_resume_exactly() -> None:
    split = random_split(n=30)
    steps = ({"name": "random_crop"}, {"name": "horizontal_flip"}, {"name": "color_jitter"})
    plain = make_loader(split, augment=augment(*steps), num_workers=0, **LOADER_ARGS)
    resident = make_loader(
        split, augment=augment(*steps), device=CPU, num_workers=2, pin_memory=True, **LOADER_ARGS
    )
    assert (resident.num_workers, resident.pin_memory) == (0, False)  # built in the loading process
    for loader in (plain, resident):
        loader.sampler.set_epoch(2)
    full = list(resident)
    for (xa, ya), (xb, yb) in zip(list(plain), full, strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    again = make_loader(split, augment=augment(*steps), device=CPU, **LOADER_ARGS)
    again.sampler.set_epoch(2, start_batch=5)
    for (xa, ya), (xb, yb) in zip(full[5:], list(again), strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_where_batches_are_built() -> None:
    split = random_split(n=4)
    lazy = SplitData(torch.arange(2), paths=(Path("a.png"), Path("b.png")))
    assert data_device(True, CPU, split) == CPU  # the tests' way onto the resident path
    assert data_device("auto", CPU, split) is None  # auto: CUDA only
    assert data_device(False, CPU, split) is None
    assert data_device("auto", None, split) is None  # the run's device is not on this machine
    assert data_device("auto", CPU, lazy) is None
    with pytest.raises(DataError, match=r"data.on_device is true, but this split is read from image files"):
        data_device(True, CPU, lazy)
    with pytest.raises(DataError, match=r"Fix: set data.cache: memory"):
        make_loader(lazy, batch_size=2, size=16, channels=3, device=CPU)


def test_on_device_takes_auto_true_or_false() -> None:
    assert ImageDataConfig(path="x").on_device == "auto"
    assert ImageDataConfig(path="x", on_device=True).on_device is True
    with pytest.raises(ValueError, match="on_device"):
        ImageDataConfig(path="x", on_device="gpu")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_resident_batches_on_cuda_stay_there_and_repeat() -> None:
    cuda = torch.device("cuda")
    split = random_split(n=30)
    steps = ({"name": "random_crop"}, {"name": "horizontal_flip"}, {"name": "rotation"})
    assert data_device("auto", cuda, split) == cuda  # tiny: fits in any GPU
    loader = make_loader(split, augment=augment(*steps), device=cuda, **LOADER_ARGS)
    first, second = list(loader), list(loader)
    for (xa, ya), (xb, yb) in zip(first, second, strict=True):
        assert xa.device.type == ya.device.type == "cuda" and xa.dtype == torch.uint8
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
