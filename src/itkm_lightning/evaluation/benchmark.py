"""Scoring one benchmark from its features: every trial's distances (re-ranked on request), its protocol's
metrics, averaged over trials or single-gallery-shot draws. Used by every results row: stages, baselines,
``itkm evaluate``, zero-shot scoring."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from itkm_lightning.errors import ConfigError
from itkm_lightning.evaluation.distances import cosine_distance
from itkm_lightning.evaluation.ranking import evaluate_rank, summarize
from itkm_lightning.evaluation.rerank import re_ranking
from itkm_lightning.evaluation.single_gallery_shot import evaluate_single_gallery_shot


def evaluate_benchmark(bench, features: torch.Tensor, rerank=None) -> dict[str, Any]:
    """Score one benchmark from the features of ``bench.query + bench.gallery`` (in that order).

    Multi-trial benchmarks average each metric (and so the CMC) over their trials and add ``mAP_std`` and
    ``R1_std`` (population standard deviation over the trials) and ``trials``. A single-gallery-shot
    benchmark (``bench.single_gallery_shot`` draws) adds ``R1_std`` over its draws, ``trials`` and
    ``"protocol": "single_gallery_shot"``. ``rerank`` (a :class:`~itkm_lightning.config.RerankConfig`, or
    None) re-ranks every trial's distances (``re_ranking`` with ``1 - cos`` distances) and is recorded
    under ``"rerank"``. Every number is a fraction in [0, 1]; ``trials`` is an int, the labels are not numbers.
    """
    nq = len(bench.query)
    trials = bench.trials or [(None, None)]
    draws = int(getattr(bench, "single_gallery_shot", 0) or 0)
    summaries, draw_r1 = [], []
    for q_idx, g_idx in trials:
        q_idx = list(range(nq)) if q_idx is None else list(q_idx)
        g_idx = list(range(len(bench.gallery))) if g_idx is None else list(g_idx)
        q = [bench.query[i] for i in q_idx]
        g = [bench.gallery[i] for i in g_idx]
        qf, gf = features[q_idx], features[[nq + i for i in g_idx]]
        distmat = cosine_distance(qf, gf)
        if rerank is not None:
            distmat = re_ranking(distmat, cosine_distance(qf, qf), cosine_distance(gf, gf),
                                 k1=rerank.k1, k2=rerank.k2, lambda_value=rerank.lambda_value)
        labels = (np.array([s.pid for s in q]), np.array([s.pid for s in g]),
                  np.array([s.camid for s in q]), np.array([s.camid for s in g]))
        if draws:
            if bench.protocol != "market":
                raise ConfigError(f"{bench.name}: single_gallery_shot needs protocol 'market', not {bench.protocol!r}")
            result = evaluate_single_gallery_shot(distmat, *labels, draws=draws)
            draw_r1.extend(float(curve[0]) for curve in result["cmc_draws"])
        else:
            clothes = {}
            if bench.protocol in ("cloth_changing", "same_clothes"):
                clothes = dict(q_clothes=np.array([s.clothes for s in q]), g_clothes=np.array([s.clothes for s in g]))
            result = evaluate_rank(distmat, *labels, protocol=bench.protocol, **clothes)
        summaries.append(summarize(result))
    scores: dict[str, Any] = {k: float(np.mean([s[k] for s in summaries])) for k in summaries[0]}
    if len(summaries) > 1:
        scores["mAP_std"] = float(np.std([s["mAP"] for s in summaries]))
        scores["R1_std"] = float(np.std([s["R1"] for s in summaries]))
        scores["trials"] = len(summaries)
    if draws:
        scores["R1_std"] = float(np.std(draw_r1))
        scores["trials"] = len(draw_r1)
        scores["protocol"] = "single_gallery_shot"
    if rerank is not None:
        scores["rerank"] = rerank.as_dict()
    return scores
