"""SLURM requeue: which checkpoint an interrupted stage resumes from.

On SIGUSR1 (sbatch ``--signal=SIGUSR1@90``) Lightning's ``SLURMEnvironment(auto_requeue=True)``, active
whenever the job runs under ``srun``, saves ``hpc_ckpt_<n>.ckpt`` in the trainer's ``default_root_dir``
mid-epoch and requeues the job; the requeued job runs the same ``itkm fit`` command, which resumes from
the newer of that file and the last end-of-epoch ``checkpoints/last.ckpt``.
"""

from __future__ import annotations

import re
from pathlib import Path

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
