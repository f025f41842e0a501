"""Training guard: stop on a non-finite loss with the step, the images and a saved state."""

from __future__ import annotations

import lightning as L
import torch

from itkm_lightning.checkpoints import NONFINITE_PREFIX, checkpoint_dir
from itkm_lightning.errors import ITKMError


class NonFiniteLossError(ITKMError, RuntimeError):
    """The training loss became NaN or infinite."""


class NonFiniteLossGuard(L.Callback):
    """Stop at the first NaN/inf loss, before its backward pass, naming the step and the batch's images.

    Lightning's Trainer has no such check (``EarlyStopping(check_finite=True)`` looks at an epoch metric,
    after the damage). The state before the bad update is saved as ``nonfinite-step<N>.ckpt`` next to the
    rolling checkpoints for inspection; it is never resumed from, and the last good end-of-epoch
    checkpoints stay untouched, so re-running resumes from the last good epoch. In DDP every rank takes
    the same decision (one boolean all-reduce per step), so no rank waits alone in a collective.

    Args:
        save_checkpoint: write the diagnostic checkpoint before stopping.
        max_paths: how many sample paths the message lists.
    """

    def __init__(self, save_checkpoint: bool = True, max_paths: int = 8) -> None:
        self.save_checkpoint = save_checkpoint
        self.max_paths = max_paths
        self._index = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        # Kept as is (no .tolist()): reading it only on failure avoids a device sync per step.
        self._index = batch.get("index") if isinstance(batch, dict) else None

    def on_before_backward(self, trainer, pl_module, loss: torch.Tensor) -> None:
        bad_here = not bool(torch.isfinite(loss.detach()).all())
        if not trainer.strategy.reduce_boolean_decision(bad_here, all=False):
            return
        step = trainer.global_step
        saved = ""
        if self.save_checkpoint:
            path = checkpoint_dir(trainer) / f"{NONFINITE_PREFIX}step{step}.ckpt"
            trainer.save_checkpoint(path)  # a collective: every rank calls it, rank 0 writes
            saved = f"; the weights before this step are saved in {path}"
        if bad_here:
            index = self._index
            indices = index.tolist() if torch.is_tensor(index) else list(index if index is not None else [])
            samples = getattr(trainer.datamodule, "train_samples", None)
            paths = [samples[i].path for i in indices] if samples is not None else [str(i) for i in indices]
            shown = ", ".join(paths[: self.max_paths]) + (f" (+{len(paths) - self.max_paths} more)"
                                                          if len(paths) > self.max_paths else "")
            value = loss.detach().float().flatten()[0].item()
            what = f"loss is {value} at step {step} (epoch {trainer.current_epoch}); batch images: {shown}"
        else:
            what = f"another rank's loss became non-finite at step {step} (epoch {trainer.current_epoch})"
        raise NonFiniteLossError(
            f"{what}{saved}. Training stopped before applying this step. Fix: check these images, or lower "
            "model.optim.lr / lr_new with a new --run_dir (a resumed run keeps its stored learning rate); the "
            "epoch checkpoints are untouched, so the same command resumes from the last good epoch"
        )
