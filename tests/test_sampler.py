import numpy as np
import pytest

from itkm_lightning.data.sampler import PseudoIdentityBatchSampler, ShardedSequentialSampler


def _labels(num_blocks=3, clusters_per_block=8, size=6, outliers=5):
    labels, blocks = [], []
    cluster = 0
    for b in range(num_blocks):
        for _ in range(clusters_per_block):
            labels += [cluster] * size
            blocks += [b] * size
            cluster += 1
        labels += [-1] * outliers
        blocks += [b] * outliers
    return np.array(labels), np.array(blocks)


def _make(labels, blocks, **kw):
    args = dict(num_clusters=4, num_instances=3, iters_per_epoch=10, seed=1)
    args.update(kw)
    return PseudoIdentityBatchSampler(labels, blocks, **args)


def test_batches_are_p_by_k_whole_identities_without_outliers():
    labels, blocks = _labels()
    batches = list(_make(labels, blocks))
    assert len(batches) == 10
    for batch in batches:
        assert len(batch) == 12 and len(set(batch)) == 12
        got = labels[batch]
        assert (got >= 0).all()
        values, counts = np.unique(got, return_counts=True)
        assert len(values) == 4 and (counts == 3).all()


def test_every_batch_mixes_blocks():
    labels, blocks = _labels(num_blocks=3)
    for batch in _make(labels, blocks, num_clusters=6):
        assert len(set(blocks[batch].tolist())) == 3


def test_ranks_get_disjoint_whole_identities_and_equal_counts():
    labels, blocks = _labels(num_blocks=2, clusters_per_block=10)
    per_rank = [list(_make(labels, blocks, rank=r, world_size=2)) for r in range(2)]
    assert len(per_rank[0]) == len(per_rank[1])
    for b0, b1 in zip(*per_rank):
        assert not set(b0) & set(b1), "a sample appears twice in one global step"
        assert not set(labels[b0]) & set(labels[b1]), "an identity is split across ranks"


def test_epochs_differ_and_are_reproducible():
    labels, blocks = _labels()
    a = list(_make(labels, blocks, epoch=0))
    assert a == list(_make(labels, blocks, epoch=0))
    assert a != list(_make(labels, blocks, epoch=1))


def test_small_clusters_contribute_all_members_once():
    labels = np.array([0, 0, 1, 1, 1, 1, 2, 2, 2, 2])
    blocks = np.zeros_like(labels)
    for batch in _make(labels, blocks, num_clusters=3, num_instances=4, iters_per_epoch=3):
        assert len(batch) == len(set(batch)) == 10


def test_too_few_clusters_shrink_the_batch_with_a_warning():
    labels = np.array([0, 0, 1, 1, 2, 2])
    with pytest.warns(UserWarning, match="only 3 pseudo-identities"):
        sampler = _make(labels, np.zeros_like(labels), num_clusters=4, num_instances=2)
    assert all(sorted(b) == list(range(6)) for b in sampler)


def test_fewer_clusters_than_ranks_is_a_clear_error():
    labels = np.array([0, 0, -1])
    with pytest.raises(ValueError, match="fewer than the 2 ranks"):
        _make(labels, np.zeros_like(labels), world_size=2)


def test_sharded_sequential_sampler_covers_everything_once():
    shards = [list(ShardedSequentialSampler(11, r, 3)) for r in range(3)]
    assert sorted(sum(shards, [])) == list(range(11))
