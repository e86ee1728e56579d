"""Kept-id validation, per-epoch order, distributed shards and ScanSampler (no .beton needed)."""
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from scan_fast.data.read.order import KeptIdsSource, epoch_order, validate_kept_ids
from scan_fast.data.read.sampler import ScanSampler


class ShrinkGrowScan:
    """Duck-typed schedule: a kept list that shrinks and grows again."""

    def __init__(self, n, fractions=(1.0, 0.65, 0.35, 0.9), seed=0):
        self.n, self.fractions, self.seed = n, fractions, seed
        self.calls = []

    def epoch_indices(self, epoch):
        self.calls.append(epoch)
        rng = np.random.default_rng([self.seed, epoch])
        k = max(1, int(self.fractions[epoch % len(self.fractions)] * self.n))
        return np.sort(rng.choice(self.n, k, replace=False))


@given(st.sets(st.integers(0, 499), min_size=1, max_size=500), st.booleans())
@settings(max_examples=60, deadline=None)
def test_validate_accepts_any_set_sorted_or_not(ids, shuffled):
    kept = np.array(sorted(ids))
    given_ids = np.random.default_rng(len(ids)).permutation(kept) if shuffled else kept
    out = validate_kept_ids(given_ids, 500)
    assert out.dtype == np.int64
    np.testing.assert_array_equal(out, kept)


@pytest.mark.parametrize("bad, message", [
    ([0, 5, 500], "kept id 500 for epoch 3 is out of range for a dataset of 500"),
    ([-1, 2], "kept id -1 for epoch 3 is out of range"),
    ([4, 1, 4, 7], "kept id 4 for epoch 3 is listed more than once"),
    ([1, 2, 2], "kept id 2 for epoch 3 is listed more than once"),
    ([], "empty"),
])
def test_validate_names_the_bad_id(bad, message):
    with pytest.raises(ValueError, match=message):
        validate_kept_ids(np.array(bad, dtype=np.int64), 500, epoch=3)


def test_validate_keeps_the_schedules_uint32_ids():
    kept = np.array([1, 5, 9], dtype=np.uint32)
    out = validate_kept_ids(kept, 10)
    assert out.dtype == np.uint32
    np.testing.assert_array_equal(out, kept)
    with pytest.raises(ValueError, match="kept id 10 is out of range"):
        validate_kept_ids(np.array([3, 10], dtype=np.uint32), 10)
    with pytest.raises(ValueError, match="kept id 3 is listed more than once"):
        validate_kept_ids(np.array([3, 3], dtype=np.uint64), 10)


def test_validate_rejects_non_integer_and_2d():
    with pytest.raises(TypeError, match="integers"):
        validate_kept_ids(np.array([0.0, 1.0]), 10)
    with pytest.raises(ValueError, match="1-D"):
        validate_kept_ids(np.zeros((2, 2), dtype=int), 10)


@given(st.integers(1, 300), st.integers(0, 10_000), st.integers(0, 50))
@settings(max_examples=50, deadline=None)
def test_epoch_order_is_a_seeded_permutation(n, seed, epoch):
    kept = np.sort(np.random.default_rng(n).choice(1000, n, replace=False))
    order = epoch_order(kept, seed, epoch)
    np.testing.assert_array_equal(np.sort(order), kept)
    np.testing.assert_array_equal(order, epoch_order(kept, seed, epoch))


def test_epoch_order_changes_with_epoch_and_seed():
    kept = np.arange(1000)
    a = epoch_order(kept, 0, 1)
    assert not np.array_equal(a, epoch_order(kept, 0, 2))
    assert not np.array_equal(a, epoch_order(kept, 1, 1))
    np.testing.assert_array_equal(epoch_order(kept, 0, 1, shuffle=False), kept)


@given(st.integers(1, 400), st.integers(1, 8), st.integers(0, 20))
@settings(max_examples=80, deadline=None)
def test_distributed_shards_are_equal_disjoint_and_cover_all_but_the_remainder(n, world, epoch):
    kept = np.sort(np.random.default_rng(n).choice(2000, n, replace=False))
    if n < world:
        with pytest.raises(ValueError, match="fewer than world_size"):
            epoch_order(kept, 7, epoch, rank=0, world_size=world)
        return
    shards = [epoch_order(kept, 7, epoch, rank=r, world_size=world) for r in range(world)]
    assert {len(s) for s in shards} == {n // world}
    union = np.concatenate(shards)
    assert len(np.unique(union)) == len(union)  # no id on two ranks
    assert set(union) <= set(kept)
    # The dropped remainder is the tail of the same permutation every rank drew.
    full = epoch_order(kept, 7, epoch)
    assert set(union) | set(full[len(union):]) == set(kept)
    assert len(full) - len(union) == n % world


def test_padded_shards_repeat_the_head_like_torch():
    kept = np.arange(10)
    shards = [epoch_order(kept, 0, 0, rank=r, world_size=4, pad=True) for r in range(4)]
    assert {len(s) for s in shards} == {3}
    union = np.concatenate(shards)
    assert set(union) == set(kept)
    full = epoch_order(kept, 0, 0)
    assert sorted(union) == sorted(np.concatenate([full, full[:2]]))


def test_source_caches_per_epoch_and_follows_changes():
    scan = ShrinkGrowScan(100)
    source = KeptIdsSource(scan, 100, seed=3)
    first = source.order(1)
    assert source.order(1) is first  # same list, same permutation object
    assert len(source.order(2)) == 35
    np.testing.assert_array_equal(source.order(1), first)


def test_source_rejects_bad_scan_and_bad_ids():
    with pytest.raises(TypeError, match="epoch_indices"):
        KeptIdsSource(object(), 10)

    class OutOfRange:
        def epoch_indices(self, epoch):
            return np.array([1, 2, 10 + epoch])

    with pytest.raises(ValueError, match="kept id 12 for epoch 2 is out of range"):
        KeptIdsSource(OutOfRange(), 10).order(2)
    with pytest.raises(ValueError, match="rank"):
        KeptIdsSource(None, 10, rank=2, world_size=2)


def test_sampler_yields_the_kept_ids_each_epoch():
    scan = ShrinkGrowScan(200)
    sampler = ScanSampler(scan, 200, seed=5, rank=0, world_size=1)
    for epoch in range(5):
        sampler.set_epoch(epoch)
        ids = list(sampler)
        assert len(ids) == len(sampler) == len(scan.epoch_indices(epoch))
        assert sorted(ids) == scan.epoch_indices(epoch).tolist()
        assert ids == epoch_order(scan.epoch_indices(epoch), 5, epoch).tolist()


def test_sampler_without_scan_is_a_seeded_shuffle_of_everything():
    sampler = ScanSampler(None, 50, seed=1, rank=0, world_size=1)
    assert sorted(sampler) == list(range(50))
    sampler_b = ScanSampler(None, 50, seed=1, rank=0, world_size=1)
    assert list(sampler) == list(sampler_b)
    with pytest.raises(ValueError, match="dataset_len"):
        ScanSampler(None, 0)


@pytest.mark.parametrize("drop_last", [True, False])
def test_distributed_sampler_ranks(drop_last):
    scan = ShrinkGrowScan(101)
    world = 3
    samplers = [ScanSampler(scan, 101, seed=2, rank=r, world_size=world, drop_last=drop_last)
                for r in range(world)]
    for epoch in range(4):
        kept = set(scan.epoch_indices(epoch).tolist())
        shards = []
        for s in samplers:
            s.set_epoch(epoch)
            shards.append(list(s))
            assert len(shards[-1]) == len(s)
        assert len({len(x) for x in shards}) == 1
        union = [i for shard in shards for i in shard]
        if drop_last:
            assert len(set(union)) == len(union) == len(kept) // world * world
            assert set(union) <= kept
        else:
            assert set(union) == kept and len(union) == -(-len(kept) // world) * world


def test_sampler_drives_a_plain_dataloader():
    scan = ShrinkGrowScan(64, fractions=(0.5,))
    dataset = torch.utils.data.TensorDataset(torch.arange(64))
    sampler = ScanSampler(scan, 64, rank=0, world_size=1)
    loader = torch.utils.data.DataLoader(dataset, batch_size=8, sampler=sampler)
    sampler.set_epoch(2)
    seen = torch.cat([b[0] for b in loader]).tolist()
    assert sorted(seen) == scan.epoch_indices(2).tolist()
