"""Batches of cached image features for Stage II: P clusters x K instances, every batch mixing scenarios."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import Dataset, Sampler

from itkm_lightning.errors import ConfigError


class CachedFeatureDataset(Dataset):
    """Items ``{"v": feature, "label": Stage I cluster}`` over precomputed image features (no images read)."""

    def __init__(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        if features.shape[0] != labels.shape[0]:
            raise ValueError(f"{features.shape[0]} features but {labels.shape[0]} labels")
        self.features = features
        self.labels = labels.long()

    def __len__(self) -> int:
        return self.features.shape[0]

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"v": self.features[index], "label": self.labels[index]}


def scenario_quotas(cluster_counts: list[int], slots: int) -> list[int]:
    """Clusters per batch from each scenario: one each (when ``slots`` allows), the rest proportional to size.

    Never more than a scenario has, so one batch holds distinct clusters.
    """
    quotas = [1 if count else 0 for count in cluster_counts]
    if sum(quotas) > slots:
        raise ConfigError(f"{slots} clusters per batch cannot hold one cluster of each of {sum(quotas)} scenarios")
    for _ in range(slots - sum(quotas)):
        open_ = [s for s, count in enumerate(cluster_counts) if quotas[s] < count]
        if not open_:
            break
        # the scenario whose clusters are least represented per slot gets the next one
        quotas[max(open_, key=lambda s: cluster_counts[s] / quotas[s])] += 1
    return quotas


class ScenarioMixingClusterSampler(Sampler[int]):
    """Indices of ``num_batches`` batches of P clusters x K instances; each batch mixes every scenario.

    ``cover="clusters"``: clusters of each scenario are drawn from a reshuffled, cycling stream, with
    per-batch quotas from ``scenario_quotas``, so a batch holds each cluster at most once; K instances per
    cluster are drawn without replacement when it has at least K members. An epoch shows each cluster about
    once (``ceil(#clusters / P)`` batches), so most images are not seen.

    ``cover="images"`` (CLIP-ReID and CCLNet show every training image per epoch): every epoch, each
    cluster's members are shuffled and cut into units of K (the last unit topped up with other members of
    the cluster), and the units of each scenario form the cycling stream; quotas follow each scenario's
    number of units, and the epoch has enough batches for every unit of every scenario, so every image
    appears at least once. Two units of one (large) cluster may share a batch: they are positives of each
    other, as repeated identities in CLIP-ReID's batches are.

    Either way the separation loss always sees pairs from different scenarios. Rank-aware (each rank
    draws its own stream: seed, epoch, rank), the rank being read when iterating, after the process group
    exists. Use it as the DataLoader's ``sampler`` with ``batch_size=batch_size`` so that Lightning's
    ``set_epoch`` call reaches it.

    Args:
        labels: cluster id of each dataset item (no outliers).
        cluster_scenario: scenario index of each cluster id.
        clusters_per_batch: P (capped at the number of clusters, or of units).
        instances_per_cluster: K.
        num_batches: batches per epoch and rank; default: what ``cover`` needs.
        seed: shared seed.
        cover: what one epoch goes through once, ``images`` or ``clusters``.
    """

    def __init__(
        self, labels: np.ndarray, cluster_scenario: np.ndarray, clusters_per_batch: int, instances_per_cluster: int,
        num_batches: int | None = None, seed: int = 0, cover: str = "images",
    ) -> None:
        labels = np.asarray(labels, dtype=np.int64)
        if labels.size == 0 or labels.min() < 0:
            raise ValueError("the sampler needs at least one item and no outlier (-1) labels")
        if clusters_per_batch < 1 or instances_per_cluster < 1 or (num_batches is not None and num_batches < 1):
            raise ConfigError("clusters_per_batch, instances_per_cluster and num_batches must be >= 1")
        if cover not in ("images", "clusters"):
            raise ConfigError(f"cover must be 'images' or 'clusters'; got {cover!r}")
        self.cover = cover
        self.instances_per_cluster = instances_per_cluster
        self.members = {int(c): np.flatnonzero(labels == c) for c in np.unique(labels)}
        scenario = np.asarray(cluster_scenario, dtype=np.int64)
        clusters = np.asarray(list(self.members), dtype=np.int64)
        self.scenario_clusters = [clusters[scenario[clusters] == s] for s in np.unique(scenario[clusters])]
        k = instances_per_cluster
        # what each scenario's stream cycles through: clusters, or units of K members
        counts = [len(c) if cover == "clusters" else sum(-(-self.members[int(x)].size // k) for x in c)
                  for c in self.scenario_clusters]
        self.clusters_per_batch = min(clusters_per_batch, sum(counts))
        self.quotas = scenario_quotas(counts, max(self.clusters_per_batch, len(self.scenario_clusters)))
        self.clusters_per_batch = sum(self.quotas)
        default = max(-(-count // quota) for count, quota in zip(counts, self.quotas) if quota)
        if cover == "clusters":
            default = -(-len(self.members) // self.clusters_per_batch)
        self.num_batches = num_batches or default
        self.seed = seed
        self.epoch = 0

    @property
    def batch_size(self) -> int:
        return self.clusters_per_batch * self.instances_per_cluster

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_batches * self.batch_size

    def __iter__(self) -> Iterator[int]:
        rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
        rng = np.random.default_rng([self.seed, self.epoch, rank])
        k = self.instances_per_cluster
        if self.cover == "clusters":
            def draw(cluster: int) -> np.ndarray:
                members = self.members[cluster]
                return rng.choice(members, size=k, replace=members.size < k)

            streams = [_CyclingStream(clusters, rng) for clusters in self.scenario_clusters]
        else:
            units: list[np.ndarray] = []
            streams = []
            for clusters in self.scenario_clusters:
                ids = []
                for cluster in clusters.tolist():
                    for unit in self._units(self.members[cluster], rng):
                        ids.append(len(units))
                        units.append(unit)
                streams.append(_CyclingStream(np.asarray(ids), rng))

            def draw(unit: int) -> np.ndarray:
                return units[unit]

        for _ in range(self.num_batches):
            batch = [draw(int(item)) for stream, quota in zip(streams, self.quotas) for item in stream.take(quota)]
            yield from np.concatenate(batch).tolist()

    def _units(self, members: np.ndarray, rng: np.random.Generator) -> list[np.ndarray]:
        """The members in random order, cut into units of K; the last one topped up from the others."""
        k = self.instances_per_cluster
        order = rng.permutation(members)
        units = [order[i:i + k] for i in range(0, order.size, k)]
        short = k - units[-1].size
        if short:
            rest = np.setdiff1d(members, units[-1])
            fill = rng.choice(rest if rest.size else members, size=short, replace=rest.size < short)
            units[-1] = np.concatenate([units[-1], fill])
        return units


class _CyclingStream:
    """Items in random order, reshuffled after each pass; ``take(n)`` never repeats an item within one call."""

    def __init__(self, items: np.ndarray, rng: np.random.Generator) -> None:
        self.items, self.rng = items, rng
        self.order: list[int] = []

    def take(self, count: int) -> list[int]:
        taken: list[int] = []
        while len(taken) < count:
            if not self.order:
                self.order = self.rng.permutation(self.items).tolist()
            candidate = self.order.pop()
            if candidate in taken:  # pass boundary: defer the repeat to the next batch
                self.order.insert(0, candidate)
                continue
            taken.append(candidate)
        return taken
