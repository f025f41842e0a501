"""Per-epoch seeding: a resumed run draws the same random numbers as an uninterrupted one."""

from __future__ import annotations

import random

import lightning as L
import numpy as np
import torch


class EpochSeed(L.Callback):
    """Reseed torch, numpy and ``random`` at every training epoch start from (seed, epoch, rank).

    Augmentations draw from the global generators; without this, a run resumed from a checkpoint would
    continue with other random numbers than the uninterrupted run (Lightning does not store generator
    states) and end with other metrics. Data-loader workers get their own seeded generator
    (``ReIDDataModule.train_dataloader``, from :func:`epoch_seed`).
    """

    def __init__(self, seed: int = 0) -> None:
        self.seed = int(seed)

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        seed = epoch_seed(self.seed, trainer.current_epoch, trainer.global_rank)
        torch.manual_seed(seed)
        np.random.seed(seed % 2**32)
        random.seed(seed)


def epoch_seed(seed: int, epoch: int, rank: int = 0) -> int:
    """A 63-bit seed mixing the run seed, the epoch and the rank (numpy's SeedSequence does the mixing)."""
    state = np.random.SeedSequence([int(seed) % 2**32, int(epoch), int(rank)]).generate_state(1, np.uint64)
    return int(state[0]) % 2**63
