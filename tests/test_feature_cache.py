"""Training-set features are extracted once per set of weights (feature_cache.py): a later stage that starts from
weights already extracted reuses them, and any change of weights, buffers, feature function or images extracts
again."""

from __future__ import annotations

import pytest
import torch
from test_stage3_fit import CLUSTERING, OPTIM, make_datamodule

from itkm_lightning.feature_cache import FeatureCache, feature_key
from itkm_lightning.handoffs import Stage2Handoff
from itkm_lightning.stages.stage1 import Stage1
from itkm_lightning.stages.stage3 import Stage3
from itkm_lightning.stages.supervised import SupervisedStage1


@pytest.fixture(scope="module")
def dm(synthetic_root):
    return make_datamodule(synthetic_root)


def count_passes(module) -> list[int]:
    """Images the module's encoder sees from now on (one entry per forward call)."""
    seen: list[int] = []
    module.encoder.register_forward_hook(lambda _m, args, _out: seen.append(len(args[0])))
    return seen


def test_the_same_weights_are_extracted_once(dm, tiny_backbone):
    dm.feature_cache = FeatureCache()
    model = Stage1(backbone=tiny_backbone, clustering=CLUSTERING)
    seen = count_passes(model)
    first = model.training_set_features(dm)
    assert sum(seen) == len(dm.train_samples) and not model.features_reused
    second = model.training_set_features(dm)
    assert sum(seen) == len(dm.train_samples) and model.features_reused
    assert torch.equal(first, second)
    second.mul_(0)  # callers may change what they get (memory.reset keeps the tensor): the cache keeps its own
    assert torch.equal(model.training_set_features(dm), first)
    assert torch.equal(first, model.extract(dm.cluster_dataloader()))  # exactly what an extraction gives


def test_any_change_of_weights_buffers_or_images_extracts_again(dm, tiny_backbone):
    dm.feature_cache = FeatureCache()
    model = Stage1(backbone=tiny_backbone, clustering=CLUSTERING)
    seen = count_passes(model)
    model.training_set_features(dm)
    with torch.no_grad():
        next(model.encoder.parameters()).view(-1)[0] += 1e-6
    model.training_set_features(dm)
    assert not model.features_reused and sum(seen) == 2 * len(dm.train_samples)

    model.encoder.register_buffer("statistic", torch.zeros(3))  # a buffer counts like a weight (batch norm)
    model.training_set_features(dm)
    model.encoder.statistic[1] = 0.5
    model.training_set_features(dm)
    assert not model.features_reused and sum(seen) == 4 * len(dm.train_samples)

    key = feature_key(model.encoder, Stage1.clustering_features, dm.train_samples, "cpu")
    assert key != feature_key(model.encoder, Stage1.clustering_features, dm.train_samples[1:], "cpu")
    assert key != feature_key(model.encoder, Stage1.retrieval_features, dm.train_samples, "cpu")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert key != feature_key(model.encoder, Stage1.clustering_features, dm.train_samples, "cpu")


def test_another_feature_function_extracts_again(dm, tiny_backbone):
    class Halved(Stage1):
        def clustering_features(self, batch):
            return super().clustering_features(batch) / 2

    dm.feature_cache = FeatureCache()
    plain = Stage1(backbone=tiny_backbone, clustering=CLUSTERING)
    other = Halved(backbone=tiny_backbone, clustering=CLUSTERING)
    other.encoder.load_state_dict(plain.encoder.state_dict())
    features = plain.training_set_features(dm)
    assert torch.allclose(other.training_set_features(dm), features / 2)
    assert not other.features_reused


def test_stages_that_start_from_extracted_weights_reuse_them(dm, tiny_backbone):
    """Stage III starts from Stage I's final encoder, the supervised reference from Stage I's first weights."""
    dm.feature_cache = FeatureCache()
    torch.manual_seed(0)
    stage1 = Stage1(backbone=tiny_backbone, clustering=CLUSTERING)
    start = stage1.training_set_features(dm)  # Stage I's first pseudo-labels
    torch.manual_seed(0)
    supervised = SupervisedStage1(backbone=tiny_backbone)
    seen = count_passes(supervised)
    assert torch.equal(supervised.training_set_features(dm), start) and seen == []

    with torch.no_grad():  # "training"
        for p in stage1.encoder.parameters():
            p.add_(0.01 * torch.randn_like(p))
    handoff = stage1.make_handoff(dm)  # extracts the final weights for its labels
    stage3 = Stage3(backbone=tiny_backbone, clustering=CLUSTERING, optim=OPTIM)
    stage3.receive_handoff({"stage1": handoff, "stage2": text_for(handoff.labels)})
    seen = count_passes(stage3)
    final = stage3.training_set_features(dm)
    assert seen == [] and stage3.features_reused
    assert torch.equal(final, stage1.extract(dm.cluster_dataloader()))


def text_for(labels: torch.Tensor) -> Stage2Handoff:
    """A Stage II hand-over for Stage I's ``labels``: random text, one per cluster."""
    num = int(labels.max()) + 1
    return Stage2Handoff.from_dict({
        "stage": "stage2", "text_features": torch.nn.functional.normalize(torch.randn(num, 16), dim=1),
        "labels": labels.clone(), "cluster_scenario": torch.zeros(num, dtype=torch.long),
        "cluster_block": torch.zeros(num, dtype=torch.long), "prompts": torch.zeros(num, 4, 32), "logit_scale": 14.3})


def test_the_cache_keeps_the_most_recently_used_within_its_bound():
    one = torch.zeros(10, 4)  # 160 bytes
    cache = FeatureCache(max_bytes=2 * 160)
    cache.put("a", one)
    cache.put("b", one + 1)
    assert cache.get("a") is not None  # "a" is now the most recent
    cache.put("c", one + 2)
    assert cache.get("b") is None and cache.get("a") is not None and cache.get("c") is not None
    assert cache.nbytes == 320 and len(cache) == 2
    cache.put("big", torch.zeros(100, 4))  # larger than the whole bound: not kept, nothing evicted
    assert cache.get("big") is None and len(cache) == 2
    off = FeatureCache(max_bytes=0)
    off.put("a", one)
    assert off.get("a") is None
