"""One LightningDataModule that merges scenarios with scenario and group tags."""

from __future__ import annotations

from dataclasses import replace
from functools import cached_property
from pathlib import Path
from typing import Literal

import lightning as L
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_warn
from PIL import Image
from torch.utils.data import DataLoader

from itkm_lightning.data.clothes import ClothesMasker
from itkm_lightning.data.dataset import ReIDImageDataset, unreadable_images
from itkm_lightning.data.sampler import PseudoIdentityBatchSampler, ShardedSequentialSampler
from itkm_lightning.data.schema import SCENARIOS, BenchmarkSplit, Sample
from itkm_lightning.data.sources import DatasetSource
from itkm_lightning.data.transforms import test_transform, train_transform
from itkm_lightning.errors import ConfigError
from itkm_lightning.feature_cache import FeatureCache
from itkm_lightning.seeding import epoch_seed


class ReIDDataModule(L.LightningDataModule):
    """Training samples of every source, tagged (scenario, group); one evaluation set per benchmark.

    Ground truth (pid, camera, clothes) stays in ``benchmarks`` and ``train_samples`` for evaluation and
    pseudo-label monitoring; the training loader yields only images, indices, tags and pseudo-labels. The
    one exception is the supervised reference step (``SupervisedStage1``), whose labeler sets the labels
    from the true identities (``callbacks/ground_truth.py``), explicitly and under that name.

    Args:
        sources: datasets to train on: ``class_path`` entries or short names (``sysu``, ``ltcc``, ``mlr_cuhk03``;
            data/names.py); their benchmarks are scored unless ``test_sources`` is set.
        test_sources: datasets to score instead (train on one dataset, test on another, as torchreid's ``-s/-t``);
            unset: the benchmarks of ``sources``.
        root: folder holding the datasets (generated data goes below it too).
        image_size: network input (H, W).
        num_clusters_per_batch: P, pseudo-identities per batch and rank.
        num_instances: K, images per pseudo-identity.
        iters_per_epoch: training steps per epoch (fixed, whatever the number of clusters).
        test_batch_size: batch size of feature extraction.
        num_workers: data-loading worker processes.
        flip: horizontal-flip probability.
        padding: pad-then-random-crop size in pixels.
        erasing: random-erasing probability.
        visible_grayscale: random-grayscale probability for visible images of ``vi`` (colour augmentation).
        highres_downsample: probability that a high-resolution training image of ``cr`` is shrunk 2-4x and
            resized back (resolution augmentation, the ``cr`` counterpart of ``visible_grayscale``).
        clothes_masker: how the clothing-agnostic view of ``cc`` is made: ``auto`` uses masks when present,
            ``fallback`` always uses the parsing-free grey-and-blur band.
        clothes_mask_format: ``binary`` masks (white = clothes, as the synthetic benchmark writes) or
            ``parsing`` label maps (LIP/SCHP class indices under a dataset's ``masks/`` folder).
        seed: seed of the P x K sampler's stream (shared by all ranks) and of the augmentations' workers;
            ``None``: ``itkm fit`` fills in ``seed_everything``, so one seed varies a whole run (0 when the module
            is built outside it).
        on_unreadable: what an image that cannot be decoded does: ``fail`` stops with its path (at first
            read); ``skip`` decodes every image once at set-up, leaves the unreadable ones out of training
            and evaluation and reports how many (a pass over the data; evaluation then scores fewer images).
    """

    def __init__(
        self,
        sources: list[DatasetSource | str],
        root: str = "data",
        image_size: tuple[int, int] = (256, 128),
        num_clusters_per_batch: int = 16,
        num_instances: int = 4,
        iters_per_epoch: int = 200,
        test_batch_size: int = 128,
        num_workers: int = 4,
        flip: float = 0.5,
        padding: int = 10,
        erasing: float = 0.5,
        visible_grayscale: float = 0.0,
        highres_downsample: float = 0.0,
        clothes_masker: Literal["auto", "mask", "fallback"] = "auto",
        clothes_mask_format: Literal["binary", "parsing"] = "binary",
        seed: int | None = None,
        on_unreadable: Literal["fail", "skip"] = "fail",
        test_sources: list[DatasetSource | str] | None = None,
    ) -> None:
        super().__init__()
        if not sources:
            raise ConfigError("data.sources is empty; list at least one dataset source")
        for name, value in (("num_clusters_per_batch", num_clusters_per_batch), ("num_instances", num_instances),
                            ("iters_per_epoch", iters_per_epoch), ("test_batch_size", test_batch_size)):
            if value < 1:
                raise ConfigError(f"data.{name} must be >= 1; got {value}")
        for name, value in (("flip", flip), ("erasing", erasing), ("visible_grayscale", visible_grayscale),
                            ("highres_downsample", highres_downsample)):
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"data.{name} is a probability and must be in [0, 1]; got {value}")
        if num_workers < 0:
            raise ConfigError(f"data.num_workers must be >= 0; got {num_workers}")
        if any(s < 16 for s in image_size):
            raise ConfigError(f"data.image_size must be at least 16x16; got {image_size}")
        from itkm_lightning.data.names import source_of

        self.sources = [source_of(s) for s in sources]
        self.test_sources = None if test_sources is None else [source_of(s) for s in test_sources]
        self.root = Path(root)
        self.image_size = tuple(image_size)
        self.num_clusters_per_batch = num_clusters_per_batch
        self.num_instances = num_instances
        self.iters_per_epoch = iters_per_epoch
        self.test_batch_size = test_batch_size
        self.num_workers = num_workers
        self.augment = dict(flip=flip, padding=padding, erasing=erasing)
        self.visible_grayscale = visible_grayscale
        self.highres_downsample = highres_downsample
        self.masker = ClothesMasker(mode=clothes_masker, mask_format=clothes_mask_format)
        self.seed = 0 if seed is None else int(seed)
        self.on_unreadable = on_unreadable
        self.benchmarks: list[BenchmarkSplit] = []
        self.train_samples: list[Sample] = []
        self.pseudo_labels: np.ndarray | None = None
        self.sampler_blocks: np.ndarray | None = None  # what the P x K sampler draws round-robin over
        self.mix_groups = False  # draw each label's K instances from both groups alike
        # Training-set features by exact weights: a later stage that starts from weights already extracted
        # reuses them (feature_cache.py).
        self.feature_cache = FeatureCache()

    # ----------------------------------------------------------------- set-up
    def prepare_data(self) -> None:
        for source in [*self.sources, *(self.test_sources or [])]:
            source.prepare(self.root)

    def _load(self, sources: list[DatasetSource]) -> list[BenchmarkSplit]:
        benchmarks: list[BenchmarkSplit] = []
        for source in sources:
            benchmarks.extend(source.load(self.root))
        names = [b.name for b in benchmarks]
        if len(set(names)) != len(names):
            raise ConfigError(f"two sources produce benchmarks with the same name: {names}")
        if self.on_unreadable == "skip":
            benchmarks = self._without_unreadable(benchmarks)
        return benchmarks

    def setup(self, stage: str | None = None) -> None:
        if self.train_samples:
            return
        trained_on = self._load(self.sources)
        tested_on = trained_on if self.test_sources is None else self._load(self.test_sources)
        # A source without query/gallery (own footage without labels) trains but has nothing to score.
        self.benchmarks = [b for b in tested_on if b.query and b.gallery]
        self.train_samples = self._merge_training_samples(trained_on)
        if not self.train_samples:
            raise ConfigError("the configured sources have no training images")

    def nothing_to_score(self) -> bool:
        """No benchmark has query and gallery images (own footage without a labels file): fit reports
        pseudo-label statistics instead of mAP."""
        self.setup("validate")
        return not self.benchmarks

    def _without_unreadable(self, benchmarks: list[BenchmarkSplit]) -> list[BenchmarkSplit]:
        """``on_unreadable=skip``: drop images that do not decode, reporting the count once."""
        paths = sorted({s.path for b in benchmarks for s in (*b.train, *b.query, *b.gallery)})
        bad = set(unreadable_images(paths, workers=max(1, self.num_workers)))
        if not bad:
            return benchmarks
        examples = ", ".join(sorted(bad)[:3])
        rank_zero_warn(f"data.on_unreadable=skip: left out {len(bad)} of {len(paths)} images that cannot be read "
                       f"(e.g. {examples}); set data.on_unreadable=fail to stop at the first one instead")
        return [_drop_samples(b, bad) for b in benchmarks]

    @staticmethod
    def _merge_training_samples(benchmarks: list[BenchmarkSplit]) -> list[Sample]:
        """Training images of all sources; every ``cc`` image also appears as its clothing-agnostic view."""
        merged: list[Sample] = []
        for bench in benchmarks:
            merged.extend(bench.train)
            if bench.scenario == "cc":
                merged.extend(replace(s, group=1) for s in bench.train if s.group == 0)
        return merged

    # ------------------------------------------------------------ block tags
    # Derived once from the training samples (fixed after setup); the callback and loaders read them often.
    @cached_property
    def blocks(self) -> list[tuple[str, int]]:
        """(scenario, group) pairs present in the training set, in a fixed order."""
        present = {(s.scenario, s.group) for s in self.train_samples}
        return sorted(present, key=lambda b: (SCENARIOS.index(b[0]), b[1]))

    @cached_property
    def block_of_index(self) -> np.ndarray:
        block_id = {b: i for i, b in enumerate(self.blocks)}
        return np.asarray([block_id[(s.scenario, s.group)] for s in self.train_samples], dtype=np.int64)

    @cached_property
    def scenario_of_index(self) -> np.ndarray:
        """Every training sample's scenario, as the index of ``SCENARIOS``."""
        return np.asarray([SCENARIOS.index(s.scenario) for s in self.train_samples], dtype=np.int64)

    @cached_property
    def group_of_index(self) -> np.ndarray:
        return np.asarray([s.group for s in self.train_samples], dtype=np.int64)

    def set_pseudo_labels(self, labels: np.ndarray, *, sampler_blocks: np.ndarray | None = None,
                          mix_groups: bool = False) -> None:
        """The labels the next training loader batches by (one per training sample, -1 = left out).

        ``sampler_blocks``: per sample, the blocks that P x K batches take labels from round-robin (default
        the (scenario, group) blocks, where pseudo-labels live); ``mix_groups``: a label's K instances
        alternate between its groups (labels that span both groups of a scenario).
        """
        labels = np.asarray(labels, dtype=np.int64)
        if labels.shape != (len(self.train_samples),):
            raise ValueError(f"expected {len(self.train_samples)} pseudo-labels, got shape {labels.shape}")
        if sampler_blocks is not None and np.shape(sampler_blocks) != labels.shape:
            raise ValueError(f"expected {len(self.train_samples)} sampler blocks, got shape {np.shape(sampler_blocks)}")
        self.pseudo_labels = labels
        self.sampler_blocks = None if sampler_blocks is None else np.asarray(sampler_blocks, dtype=np.int64)
        self.mix_groups = mix_groups

    # ------------------------------------------------------------ views
    def _clothing_agnostic_view(self, sample: Sample, image: Image.Image) -> Image.Image:
        if sample.scenario != "cc" or sample.group != 1:
            return image
        mask = None
        if sample.mask_path and Path(sample.mask_path).is_file():
            mask = self.masker.load_mask(sample.mask_path).resize(image.size, Image.NEAREST)
        return self.masker(image, mask)

    def _rank_world(self) -> tuple[int, int]:
        trainer = getattr(self, "trainer", None)
        if trainer is None:
            return 0, 1
        return trainer.global_rank, trainer.world_size

    def _loader(self, dataset, **kwargs) -> DataLoader:
        return DataLoader(dataset, num_workers=self.num_workers, pin_memory=False,
                          persistent_workers=False, **kwargs)

    # ------------------------------------------------------------ loaders
    def train_dataloader(self) -> DataLoader:
        if self.pseudo_labels is None:
            raise RuntimeError("no pseudo-labels yet: the pseudo-label callback must cluster before training")
        rank, world = self._rank_world()
        epoch = self.trainer.current_epoch if getattr(self, "trainer", None) is not None else 0
        sampler = PseudoIdentityBatchSampler(
            self.pseudo_labels, self.block_of_index if self.sampler_blocks is None else self.sampler_blocks,
            num_clusters=self.num_clusters_per_batch, num_instances=self.num_instances,
            iters_per_epoch=self.iters_per_epoch, seed=self.seed, epoch=epoch, rank=rank, world_size=world,
            group_of_index=self.group_of_index if self.mix_groups else None,
        )
        base = train_transform(self.image_size, **self.augment)
        extra = {}
        if self.visible_grayscale > 0:
            extra[("vi", 0)] = train_transform(self.image_size, grayscale=self.visible_grayscale, **self.augment)
        if self.highres_downsample > 0:
            extra[("cr", 0)] = train_transform(self.image_size, downsample=self.highres_downsample, **self.augment)
        dataset = ReIDImageDataset(self.train_samples, base, pseudo_labels=self.pseudo_labels,
                                   view_transform=self._clothing_agnostic_view, extra_transforms=extra)
        # Worker seeds from (seed, epoch, rank), not from the global generator: a resumed run augments alike.
        generator = torch.Generator().manual_seed(epoch_seed(self.seed, epoch, rank))
        return self._loader(dataset, batch_sampler=sampler, generator=generator)

    def extraction_dataloader(self, samples: list[Sample]) -> DataLoader:
        """Test-transform loader over ``samples`` for this rank's shard (indices let the gather reorder)."""
        rank, world = self._rank_world()
        dataset = ReIDImageDataset(samples, test_transform(self.image_size),
                                   view_transform=self._clothing_agnostic_view)
        sampler = ShardedSequentialSampler(len(dataset), rank, world)
        return self._loader(dataset, batch_size=self.test_batch_size, sampler=sampler)

    def cluster_dataloader(self) -> DataLoader:
        return self.extraction_dataloader(self.train_samples)

    def val_dataloader(self) -> list[DataLoader]:
        return [self.extraction_dataloader(b.query + b.gallery) for b in self.benchmarks]

    def test_dataloader(self) -> list[DataLoader]:
        return self.val_dataloader()


def _drop_samples(bench: BenchmarkSplit, bad: set[str]) -> BenchmarkSplit:
    """``bench`` without the samples whose path is in ``bad``; trial indices renumbered to match."""
    def keep(samples: list[Sample]) -> tuple[list[Sample], dict[int, int]]:
        kept = [i for i, s in enumerate(samples) if s.path not in bad]
        return [samples[i] for i in kept], {old: new for new, old in enumerate(kept)}

    query, q_map = keep(bench.query)
    gallery, g_map = keep(bench.gallery)
    trials = None
    if bench.trials is not None:
        trials = [(None if q is None else [q_map[i] for i in q if i in q_map],
                   None if g is None else [g_map[i] for i in g if i in g_map]) for q, g in bench.trials]
    return replace(bench, train=[s for s in bench.train if s.path not in bad], query=query, gallery=gallery,
                   trials=trials)
