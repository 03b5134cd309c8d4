"""Multi-process training: two gloo ranks train, evaluate and resume as one process does."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from torchkiln.core.errors import ConfigError
from torchkiln.engine.distributed import ShardedBatches

WORKER = Path(__file__).with_name("ddp_worker.py")


class Batches:
    """An inner sampler: three batches of 5, 5 and 3 items."""

    def __init__(self) -> None:
        self.epoch = 0

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return 3

    def __iter__(self) -> Iterator[tuple[int, int, torch.Tensor]]:
        order = torch.arange(13)
        for b in range(3):
            yield self.epoch, b, order[b * 5 : b * 5 + 5]


def test_shards_split_every_batch_between_ranks_without_duplicates() -> None:
    shards = [list(ShardedBatches(Batches(), rank=r, world=2, train=False)) for r in range(2)]
    assert [len(s[2]) for s in shards[0]] == [3, 3, 2] and [len(s[2]) for s in shards[1]] == [2, 2, 1]
    for b in range(3):
        both = torch.cat([shards[0][b][2], shards[1][b][2]])
        assert both.tolist() == list(range(b * 5, min(b * 5 + 5, 13)))  # each item once, in order
    assert [b for _, b, _ in shards[0]] == [0, 1, 2]  # rank 0: the keys of one process
    assert [b for _, b, _ in shards[1]] == [3, 4, 5]  # others: keys of their own, for their own randomness
    sampler = ShardedBatches(Batches(), rank=1, world=2, train=True)
    list(sampler)
    assert [sampler.batch_items(b) for b in range(3)] == [5, 5, 3]


def test_an_evaluation_rank_skips_its_empty_shard() -> None:
    shards = list(ShardedBatches(Batches(), rank=3, world=4, train=False))
    assert [b for _, b, _ in shards] == [9, 10]  # batch 2 has 3 items: rank 3 gets none


def test_a_training_batch_smaller_than_the_group_is_refused() -> None:
    with pytest.raises(ConfigError) as info:
        list(ShardedBatches(Batches(), rank=0, world=4, train=True))
    assert str(info.value) == (
        "Training batch 2 has 3 item(s) for 4 processes; every process needs at least one. Use "
        "train.batch_size >= 4 with at least 4 training items, or fewer processes (--nproc)."
    )


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[int, dict]:
    out = tmp_path_factory.mktemp("ddp")
    env = {"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}
    subprocess.run([sys.executable, str(WORKER), str(out)], check=True, env=env, timeout=300)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
    subprocess.run([*torchrun, str(WORKER), str(out)], check=True, env=env, timeout=300)
    return {w: torch.load(out / f"{w}.pt", weights_only=True) for w in (1, 2)}


def test_two_ranks_give_the_val_metrics_and_sample_count_of_one(runs: dict[int, dict]) -> None:
    one, two = runs[1], runs[2]
    assert one["samples"] == two["samples"] == 3 * 45 // 9 * 9  # every training item once an epoch
    assert len(one["history"]) == len(two["history"]) == 3
    for a, b in zip(one["history"], two["history"], strict=True):
        assert a.keys() == b.keys()
        assert a["val/accuracy"] == b["val/accuracy"]
        for key in a:
            assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-6), key
    for name, w in one["weights"].items():
        torch.testing.assert_close(two["weights"][name], w, rtol=1e-5, atol=1e-6)


def test_a_run_with_two_optimizers_averages_its_gradients_over_ranks(runs: dict[int, dict]) -> None:
    one, two = runs[1], runs[2]
    for a, b in zip(one["two_optimizers_history"], two["two_optimizers_history"], strict=True):
        for key in a:
            assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-6), key
    for name, w in one["two_optimizers_weights"].items():
        torch.testing.assert_close(two["two_optimizers_weights"][name], w, rtol=1e-5, atol=1e-6)


def test_a_two_rank_run_killed_mid_epoch_resumes_bit_for_bit(runs: dict[int, dict]) -> None:
    two = runs[2]
    assert two["crashed_at"] == (1, 1)  # killed in epoch 2, after its first step's checkpoint
    assert two["resumed_history"] == two["history"]
    for name, w in two["weights"].items():
        assert torch.equal(two["resumed_weights"][name], w), name
