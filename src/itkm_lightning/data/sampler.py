"""Rank-aware samplers.

Lightning's ``DistributedSampler`` wrapper would split each identity batch across ranks, so the project
sets ``use_distributed_sampler=False`` and shards here itself (fast-reid does the same).
"""

from __future__ import annotations

import warnings
from collections import defaultdict
from collections.abc import Iterator, Sequence

import numpy as np
from torch.utils.data import Sampler

from itkm_lightning.errors import ConfigError


class PseudoIdentityBatchSampler(Sampler[list[int]]):
    """P clusters x K instances per rank and step, a fixed number of steps per epoch.

    Every step draws ``world_size * P`` distinct clusters from one shared, seeded stream, so all ranks agree
    without communicating; rank r takes clusters ``[r*P, (r+1)*P)``: each rank sees whole pseudo-identities,
    no index appears twice in a step, and every rank yields the same number of batches. Clusters are drawn
    round-robin over the blocks (``block_of_index``: (scenario, group) ids) so that every batch mixes
    scenarios and groups. A cluster smaller than K contributes all its members (no duplicates).
    Outliers (label -1) are never drawn. With fewer clusters than ``world_size * P`` (early epochs, degenerate
    clustering), batches shrink to the clusters available, with a warning.

    ``group_of_index`` (optional, per sample): a cluster's K instances alternate between the groups its
    members belong to (as many from each group as it has, as evenly as K allows), so a label that spans
    both groups of a scenario (the supervised reference's true identities) gives batches that mix them.
    Without it, instances are drawn from all members alike (pseudo-identities live in one group).
    """

    def __init__(
        self,
        labels: Sequence[int] | np.ndarray,
        block_of_index: Sequence[int] | np.ndarray,
        *,
        num_clusters: int,
        num_instances: int,
        iters_per_epoch: int,
        seed: int = 0,
        epoch: int = 0,
        rank: int = 0,
        world_size: int = 1,
        group_of_index: Sequence[int] | np.ndarray | None = None,
    ) -> None:
        if num_clusters < 1 or num_instances < 1 or iters_per_epoch < 1:
            raise ValueError("num_clusters, num_instances and iters_per_epoch must all be >= 1")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world_size {world_size}")
        labels = np.asarray(labels, dtype=np.int64)
        blocks = np.asarray(block_of_index, dtype=np.int64)
        if labels.shape != blocks.shape:
            raise ValueError("labels and block_of_index must have one entry per sample")
        self.num_clusters = num_clusters
        self.num_instances = num_instances
        self.iters_per_epoch = iters_per_epoch
        self.seed = seed
        self.epoch = epoch
        self.rank = rank
        self.world_size = world_size
        members: dict[int, list[int]] = defaultdict(list)
        for index, label in enumerate(labels.tolist()):
            if label >= 0:
                members[label].append(index)
        self.members = {label: np.asarray(idx, dtype=np.int64) for label, idx in sorted(members.items())}
        self.members_by_group: dict[int, list[np.ndarray]] | None = None
        if group_of_index is not None:
            groups = np.asarray(group_of_index, dtype=np.int64)
            if groups.shape != labels.shape:
                raise ValueError("group_of_index must have one entry per sample")
            self.members_by_group = {label: [idx[groups[idx] == g] for g in np.unique(groups[idx])]
                                     for label, idx in self.members.items()}
        clusters_of_block: dict[int, list[int]] = defaultdict(list)
        for label, idx in self.members.items():
            clusters_of_block[int(blocks[idx[0]])].append(label)
        self.clusters_of_block = dict(sorted(clusters_of_block.items()))
        available = len(self.members) // world_size
        if available < 1:
            raise ConfigError(
                f"clustering produced {len(self.members)} pseudo-identities, fewer than the {world_size} ranks that "
                "each need one; check the clustering settings (eps, min_samples) or the features"
            )
        if available < num_clusters:
            warnings.warn(
                f"only {len(self.members)} pseudo-identities for {num_clusters} per batch x {world_size} ranks: "
                f"batches hold {available} identities this epoch",
                stacklevel=2,
            )
            self.num_clusters = available

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.iters_per_epoch

    def _step_clusters(self, rng: np.random.Generator, queues: dict[int, list[int]]) -> list[int]:
        """Distinct clusters for one global step, round-robin over blocks starting at a random block."""
        needed = self.num_clusters * self.world_size
        blocks = list(self.clusters_of_block)
        start = int(rng.integers(len(blocks)))
        blocks = blocks[start:] + blocks[:start]
        chosen: list[int] = []
        taken: set[int] = set()
        while len(chosen) < needed:
            progressed = False
            for block in blocks:
                if len(chosen) == needed:
                    break
                pool = self.clusters_of_block[block]
                if len(taken.intersection(pool)) == len(pool):
                    continue  # this block has no cluster left for this step
                queue = queues[block]
                while True:
                    if not queue:
                        queue.extend(rng.permutation(pool).tolist())
                    cluster = queue.pop()
                    if cluster not in taken:
                        break
                chosen.append(cluster)
                taken.add(cluster)
                progressed = True
            if not progressed:
                break
        return chosen

    def __iter__(self) -> Iterator[list[int]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        queues: dict[int, list[int]] = {block: [] for block in self.clusters_of_block}
        for _ in range(self.iters_per_epoch):
            clusters = self._step_clusters(rng, queues)
            mine = clusters[self.rank * self.num_clusters : (self.rank + 1) * self.num_clusters]
            batch: list[int] = []
            for cluster in clusters:
                picked = self._instances(rng, cluster)  # drawn on every rank: keeps streams aligned
                if cluster in mine:
                    batch.extend(picked.tolist())
            yield batch

    def _instances(self, rng: np.random.Generator, cluster: int) -> np.ndarray:
        """K distinct members of ``cluster`` (all of them when it has fewer), alternating groups when known."""
        members = self.members[cluster]
        take = min(self.num_instances, len(members))
        if self.members_by_group is None:
            return rng.choice(members, size=take, replace=False)
        # One shuffled queue per group, read round-robin from a random group: g0, g1, g0, g1, ...
        queues = [rng.permutation(idx) for idx in self.members_by_group[cluster]]
        first = int(rng.integers(len(queues)))
        queues = queues[first:] + queues[:first]
        depth = max(len(q) for q in queues)
        order = [q[i] for i in range(depth) for q in queues if i < len(q)]
        return np.asarray(order[:take], dtype=np.int64)


class ShardedSequentialSampler(Sampler[int]):
    """Rank r reads indices r, r + world_size, ...; gathers carry the indices, so order is restored after."""

    def __init__(self, num_samples: int, rank: int = 0, world_size: int = 1) -> None:
        self.num_samples = num_samples
        self.rank = rank
        self.world_size = world_size

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.num_samples, self.world_size))

    def __len__(self) -> int:
        return len(range(self.rank, self.num_samples, self.world_size))
