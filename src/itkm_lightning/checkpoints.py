"""Which Lightning checkpoint a stage resumes from."""

from __future__ import annotations

from pathlib import Path

LAST_CHECKPOINT = "last.ckpt"


def resume_checkpoint(directory: Path) -> Path | None:
    """The checkpoint to resume a stage from (``<stage>/checkpoints``), or None to start the stage afresh."""
    last = Path(directory) / LAST_CHECKPOINT
    return last if last.is_file() else None
