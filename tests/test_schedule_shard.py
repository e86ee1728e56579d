"""Per-rank shards of an epoch (scan_fast/schedule/shard.py): the engine against the numpy oracle,
the shard contract for W up to 512, the world-size-independent global batches, and every schedule."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scan_fast.index import SampleSet, get_num_threads, keyed_shard, set_num_threads
from scan_fast.schedule import Scan, ScanReference
from scan_fast.schedule.shard import (KeptSet, epoch_shard, epoch_shard_reference, keyed_permutation_reference,
                                      shard_length)
from scan_fast.schedule.infobatch import InfoBatch
from scan_fast.schedule.no_pruning import NoPruning
from scan_fast.schedule.random_pruning import RandomPruning
from scan_fast.schedule.static_coreset import StaticCoreset


def _kept_set(n, fraction, members, seed):
    """A random kept set of about fraction * n ids, held as members or as non-members of a bitset."""
    rng = np.random.default_rng(seed)
    chosen = np.flatnonzero(rng.random(n) < fraction)
    if members:
        return KeptSet.of(chosen, n), chosen
    excluded = np.setdiff1d(np.arange(n), chosen)
    ids = SampleSet(n)
    ids.add(excluded)
    return KeptSet(ids, members=False), chosen


@given(n=st.integers(1, 3000), fraction=st.floats(0.01, 1.0), members=st.booleans(), world=st.integers(1, 9),
       data=st.data())
@settings(max_examples=80, deadline=None)
def test_engine_matches_the_numpy_oracle(n, fraction, members, world, data):
    kept, ids = _kept_set(n, fraction, members, seed=n)
    if len(ids) == 0:
        with pytest.raises(ValueError, match="keeps no ids"):
            epoch_shard(kept, 0)
        return
    rank = data.draw(st.integers(0, world - 1))
    epoch, seed = data.draw(st.integers(0, 1000)), data.draw(st.integers(0, 2**40))
    shuffle, pad = data.draw(st.booleans()), data.draw(st.booleans())
    if len(ids) < world and not pad:
        with pytest.raises(ValueError, match=f"keeps {len(ids)} ids, fewer than world_size={world}"):
            epoch_shard(kept, epoch, rank, world, seed)
        return
    got = epoch_shard(kept, epoch, rank, world, seed, shuffle, pad)
    assert got.dtype == np.int64
    np.testing.assert_array_equal(got, epoch_shard_reference(ids, epoch, rank, world, seed, shuffle, pad))


@pytest.mark.parametrize("size", [1, 2, 3, 4, 5, 17, 64, 65, 1000, 4097])
def test_keyed_permutation_is_a_bijection(size):
    order = keyed_permutation_reference(size, 3, 5, np.arange(size))
    np.testing.assert_array_equal(np.sort(order), np.arange(size))
    if size >= 5:
        assert not np.array_equal(order, np.arange(size))


# W up to 512 in one process: every rank's shard, checked together.
_WORLDS = [1, 2, 3, 7, 8, 64, 100, 511, 512]


@pytest.mark.parametrize("world", _WORLDS)
@pytest.mark.parametrize("members", [True, False])
def test_shards_are_disjoint_equal_and_cover_all_but_the_remainder(world, members):
    kept, ids = _kept_set(20_011, 0.6, members, seed=world)
    shards = [epoch_shard(kept, 4, rank, world, seed=11) for rank in range(world)]
    assert {len(s) for s in shards} == {len(ids) // world}
    union = np.concatenate(shards)
    assert len(np.unique(union)) == len(union)  # no id on two ranks
    assert np.isin(union, ids).all()
    assert len(ids) - len(union) == len(ids) % world <= world - 1
    # The left-over ids are the tail of the keyed order: which ones changes with the epoch.
    next_epoch = np.concatenate([epoch_shard(kept, 5, rank, world, seed=11) for rank in range(world)])
    if len(ids) % world:
        assert not np.array_equal(np.setdiff1d(ids, union), np.setdiff1d(ids, next_epoch))


@given(epoch=st.integers(0, 100), seed=st.integers(0, 1000))
@settings(max_examples=20, deadline=None)
def test_order_changes_with_epoch_and_seed(epoch, seed):
    kept = KeptSet.everything(5000)
    base = epoch_shard(kept, epoch, seed=seed)
    np.testing.assert_array_equal(np.sort(base), np.arange(5000))
    np.testing.assert_array_equal(base, epoch_shard(kept, epoch, seed=seed))
    assert not np.array_equal(base, epoch_shard(kept, epoch + 1, seed=seed))
    assert not np.array_equal(base, epoch_shard(kept, epoch, seed=seed + 1))
    np.testing.assert_array_equal(epoch_shard(kept, epoch, seed=seed, shuffle=False), np.arange(5000))


def test_result_does_not_depend_on_the_thread_count():
    # Large enough for several buckets of positions and several slices per thread.
    kept, _ = _kept_set(3_000_017, 0.7, members=False, seed=1)
    before = get_num_threads()
    try:
        results = []
        for threads in (1, 2, 5):
            set_num_threads(threads)
            results.append([epoch_shard(kept, 3, rank, 3, seed=9) for rank in (0, 2)])
    finally:
        set_num_threads(before)
    for other in results[1:]:
        for a, b in zip(results[0], other):
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("global_batch, worlds", [(48, [1, 2, 3, 4, 6, 8, 16]), (64, [1, 2, 4, 8, 64])])
def test_global_batches_do_not_depend_on_the_world_size(global_batch, worlds):
    """Global batch i (positions [i G, (i + 1) G)) is the same ids for every W with W x b = G."""
    kept, _ = _kept_set(10_007, 0.5, members=False, seed=2)
    batches_by_world = {}
    for world in worlds:
        local = global_batch // world
        shards = [epoch_shard(kept, 7, rank, world, seed=3) for rank in range(world)]
        steps = len(shards[0]) // local
        # The trainer gathers each rank's batch and orders them by global position (rank-interleaved).
        batches_by_world[world] = [np.stack([s[i * local:(i + 1) * local] for s in shards], axis=1).reshape(-1)
                                   for i in range(steps)]
    reference = batches_by_world[worlds[0]]
    for world, batches in batches_by_world.items():
        steps = min(len(batches), len(reference))
        assert steps >= len(kept) // global_batch - 1
        for i in range(steps):
            np.testing.assert_array_equal(batches[i], reference[i], err_msg=f"W={world}, batch {i}")


def test_keyed_shard_checks_its_arguments():
    with pytest.raises(TypeError, match="kept must be a SampleSet"):
        keyed_shard([1, 2], members=True, seed=0, stream=0, start=0, step=1, count=1)
    with pytest.raises(ValueError, match="no kept ids"):
        keyed_shard(SampleSet(10), members=True, seed=0, stream=0, start=0, step=1, count=1)
    with pytest.raises(ValueError, match="seed must be in"):
        keyed_shard(SampleSet(10), members=False, seed=-1, stream=0, start=0, step=1, count=1)
    with pytest.raises(ValueError, match=r"rank must be in \[0, world_size=2\)"):
        epoch_shard(KeptSet.everything(10), 0, rank=2, world_size=2)
    with pytest.raises(ValueError, match="world_size must be >= 1"):
        epoch_shard(KeptSet.everything(10), 0, world_size=0)
    assert shard_length(10, 4) == 2 and shard_length(10, 4, pad=True) == 3


def _run_schedule(schedule, epochs, batch=50, world=4, seed=5):
    """Drives `schedule` through its epochs by shards; per epoch: (sorted kept ids, the shards)."""
    seen = {}
    for epoch in range(epochs):
        shards = [schedule.epoch_shard(epoch, rank, world, seed) for rank in range(world)]
        kept = schedule.epoch_indices(epoch)
        assert len(schedule.epoch_kept_set(epoch)) == len(kept)
        seen[epoch] = (kept, shards)
        order = np.concatenate([s.reshape(-1, 1) for s in shards], axis=1).reshape(-1)
        for i in range(0, len(order) - batch + 1, batch):
            ids = order[i:i + batch]
            loss = ((ids * 2654435761) % 1000).astype(np.float64)  # a fixed loss per id
            schedule.observe(ids, loss, loss[::-1].copy())
        schedule.end_epoch(epoch, 1.0 / (epoch + 1) if epoch < 2 else 0.4)
    return seen


@pytest.mark.parametrize("make", [
    lambda n: Scan(n, seed=3, prune_threshold=0.9),
    lambda n: ScanReference(n, seed=3, prune_threshold=0.9),
    lambda n: NoPruning(n),
    lambda n: RandomPruning(n, prune_counts={2: 100, 3: 400}, seed=1),
    lambda n: InfoBatch(n, num_epochs=6, seed=1),
    lambda n: StaticCoreset(n, np.arange(0, n, 3)),
], ids=["Scan", "ScanReference", "NoPruning", "RandomPruning", "InfoBatch", "StaticCoreset"])
def test_every_schedule_serves_shards_of_its_kept_ids(make):
    n, world = 1000, 4
    seen = _run_schedule(make(n), epochs=6, world=world)
    for epoch, (kept, shards) in seen.items():
        for rank, shard in enumerate(shards):
            np.testing.assert_array_equal(shard, epoch_shard_reference(kept, epoch, rank, world, seed=5))
    assert any(len(kept) < n for kept, _ in seen.values()) or isinstance(make(n), NoPruning)


def test_epoch_shard_begins_the_epoch_and_keeps_the_order_of_calls():
    scan = Scan(100, seed=0)
    with pytest.raises(ValueError, match=r"epoch_shard\(1\) but the next epoch is 0"):
        scan.epoch_shard(1)
    first = scan.epoch_shard(0, 0, 2)
    np.testing.assert_array_equal(first, scan.epoch_shard(0, 0, 2))
    with pytest.raises(ValueError, match=r"epoch_kept_set\(1\) while epoch 0 is in progress"):
        scan.epoch_kept_set(1)
    scan.end_epoch(0, 1.0)
    assert not np.array_equal(scan.epoch_shard(1, 0, 2), first)


def test_loaders_and_sampler_read_shards_without_the_kept_list():
    """KeptIdsSource and ScanSampler take a schedule's kept bitset; epoch_indices is never called."""
    from scan_fast.data.read.order import KeptIdsSource
    from scan_fast.data.read.sampler import ScanSampler

    class NoList(Scan):
        def epoch_indices(self, epoch):
            raise AssertionError("the global kept list was asked for")

    scan = NoList(500, seed=1)
    source = KeptIdsSource(scan, 500, seed=4, rank=1, world_size=3)
    np.testing.assert_array_equal(source.order(0), epoch_shard_reference(np.arange(500), 0, 1, 3, seed=4))
    sampler = ScanSampler(scan, 500, seed=4, rank=1, world_size=3, drop_last=True)
    assert list(sampler) == source.order(0).tolist() and len(sampler) == 166
    with pytest.raises(ValueError, match="the schedule is for 500 samples, the data set has 400"):
        KeptIdsSource(scan, 400)


def test_the_source_recomputes_a_shard_when_a_reloaded_state_changes_the_epoch():
    from scan_fast.data.read.order import KeptIdsSource

    scan = Scan(400, seed=2, prune_threshold=0.9)
    _run_schedule(scan, epochs=3)  # epoch 2 prepared: epoch 3 prunes
    pruning_state = scan.state_dict()
    full = Scan(400, seed=2, prune_threshold=0.9)
    for epoch in range(3):  # no preparation: epoch 3 keeps everything
        full.epoch_kept_set(epoch)
        full.end_epoch(epoch, 1.0)
    source = KeptIdsSource(full, 400, seed=1)
    assert len(source.order(3)) == 400
    full.load_state_dict(pruning_state)
    assert len(source.order(3)) == len(scan.epoch_kept_set(3)) < 400
