"""Re-identification scoring (docs/protocols.md section 5): distances, protocols, ranking metrics, re-ranking.

- ``distances``: ``cosine_distance`` and the input checks; ``protocols``: what each protocol removes;
- ``ranking``: ``evaluate_rank`` (CMC, mAP, mINP without sorting whole rows) and ``summarize``;
- ``single_gallery_shot``: the cross-resolution literature's CMC; ``rerank``: k-reciprocal re-ranking;
- ``benchmark``: ``evaluate_benchmark``, one benchmark's trials and options end to end (import it from
  ``itkm_lightning.evaluation.benchmark``: it needs torch and re-ranking, the rest is numpy only).
"""

from __future__ import annotations

from typing import Any

from itkm_lightning.evaluation.distances import cosine_distance
from itkm_lightning.evaluation.protocols import PROTOCOLS
from itkm_lightning.evaluation.ranking import evaluate_rank, summarize
from itkm_lightning.evaluation.single_gallery_shot import SINGLE_GALLERY_SHOT_DRAWS, evaluate_single_gallery_shot

__all__ = ["PROTOCOLS", "SINGLE_GALLERY_SHOT_DRAWS", "cosine_distance", "evaluate_rank", "evaluate_single_gallery_shot",
           "re_ranking", "summarize"]


def __getattr__(name: str) -> Any:
    """``re_ranking`` (rerank.py) is imported on first use: it needs scipy and the clustering helpers, which
    scoring without re-ranking does not."""
    if name == "re_ranking":
        from itkm_lightning.evaluation.rerank import re_ranking

        return re_ranking
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
