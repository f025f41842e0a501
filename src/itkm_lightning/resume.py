"""Which checkpoint an interrupted stage resumes from (docs/reliability.md).

* :func:`resume_checkpoint` picks the newest end-of-epoch checkpoint of a folder that loads, warning about
  each one that does not.
* SLURM requeue: on SIGUSR1 (sbatch ``--signal=SIGUSR1@90``) Lightning's ``SLURMEnvironment(auto_requeue=True)``,
  active whenever the job runs under ``srun``, saves ``hpc_ckpt_<n>.ckpt`` in the trainer's ``default_root_dir``
  mid-epoch and requeues the job; the requeued job runs the same ``itkm fit`` command, which resumes from the
  newer of that file and the last end-of-epoch checkpoint (:func:`stage_resume_checkpoint`).
"""

from __future__ import annotations

import re
from pathlib import Path

from lightning.pytorch.utilities import rank_zero_warn

from itkm_lightning.checkpoints import NONFINITE_PREFIX, CorruptCheckpointError, read_checkpoint

HPC_CHECKPOINT = re.compile(r"hpc_ckpt_(\d+)\.ckpt")


def requeue_checkpoint(directory: Path) -> Path | None:
    """The highest-numbered ``hpc_ckpt_<n>.ckpt`` in ``directory`` (Lightning's own pick), or None."""
    found = [(int(m.group(1)), p) for p in Path(directory).glob("hpc_ckpt_*.ckpt")
             if (m := HPC_CHECKPOINT.fullmatch(p.name))]
    return max(found)[1] if found else None


def newest_checkpoint(*candidates: Path | None) -> Path | None:
    """The most recently written existing file among ``candidates``."""
    existing = [Path(c) for c in candidates if c is not None and Path(c).is_file()]
    return max(existing, key=lambda p: p.stat().st_mtime_ns) if existing else None


def checkpoint_candidates(directory: str | Path) -> list[Path]:
    """Resumable ``*.ckpt`` files of ``directory``, newest first (links resolved, each file once)."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    files: dict[Path, Path] = {}
    for path in directory.glob("*.ckpt"):
        if path.name.startswith(NONFINITE_PREFIX) or not path.exists():
            continue  # diagnostics of a failed step; dangling links
        files.setdefault(path.resolve(), path)
    return sorted(files, key=lambda p: (p.stat().st_mtime_ns, p.name), reverse=True)


def resume_checkpoint(directory: str | Path) -> Path | None:
    """The newest checkpoint in ``directory`` that loads; ``None`` when there is none.

    Each newer file that does not load (truncated, corrupt, not a training checkpoint) is reported with a
    warning naming it, and the previous one is tried. A file that would run code stops the run
    (:class:`~itkm_lightning.safe_load.UnsafeFileError`): someone put it there, which is no disk fault.
    """
    for path in checkpoint_candidates(directory):
        try:
            read_checkpoint(path)
        except CorruptCheckpointError as err:
            rank_zero_warn(f"{err}; skipping it and trying the previous checkpoint (delete the file to silence this)")
            continue
        return path
    return None


def stage_resume_checkpoint(stage_dir: Path) -> Path | None:
    """The newest good end-of-epoch checkpoint of a stage, or a newer mid-epoch one that a SLURM requeue left."""
    return newest_checkpoint(resume_checkpoint(Path(stage_dir) / "checkpoints"), requeue_checkpoint(stage_dir))
