"""The supervised reference's labeler: the true identities in place of clustering.

This is the one place where ground-truth identities reach training, and only the explicitly named
``supervised`` step (``SupervisedStage1``) uses it; Stage I and III label with ``PseudoLabelCallback``.
"""

from __future__ import annotations

from collections import Counter

import lightning as L
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_info

from itkm_lightning.data.schema import SCENARIOS, Sample


def ground_truth_labels(samples: list[Sample]) -> np.ndarray:
    """One label per true person of a scenario, shared by both of its groups (0..C-1, in order of appearance).

    A person's visible and infrared pictures (high- and low-resolution, original and clothing-agnostic
    view) get the same label; the same pid in two sources (or scenarios) is two people (``Sample.identity``
    is namespaced by source).
    """
    ids: dict[tuple[str, str], int] = {}
    return np.asarray([ids.setdefault((s.scenario, s.identity), len(ids)) for s in samples], dtype=np.int64)


class GroundTruthLabelCallback(L.Callback):
    """At fit start: ground-truth labels for the batches, and one memory entry per true person.

    Each entry's block is its scenario (not its (scenario, group) block as in Stage I), so a sample's
    logits run over every person of its scenario and the entry of its own person gathers both groups'
    features. The labels never change, so there is no re-clustering; the memory is built once from the
    starting weights' features and then follows the momentum updates (a resumed run keeps the
    checkpoint's memory).
    """

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        dm = trainer.datamodule
        labels = ground_truth_labels(dm.train_samples)
        dm.set_pseudo_labels(labels, sampler_blocks=dm.scenario_of_index, mix_groups=True)
        if pl_module.memory.num_clusters == 0:
            features = pl_module.training_set_features(dm)
            device = pl_module.device
            pl_module.memory.reset(features.to(device), torch.from_numpy(labels).to(device),
                                   torch.from_numpy(dm.scenario_of_index).to(device))
        counts = Counter((SCENARIOS[int(s)], int(y)) for s, y in zip(dm.scenario_of_index, labels))
        people = Counter(scenario for scenario, _ in counts)
        rank_zero_info("supervised: ground-truth identities (both groups of a scenario share them): "
                       + ", ".join(f"{scenario}: {n} people" for scenario, n in people.items()))
