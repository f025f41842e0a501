import math

import torch
import torch.nn.functional as F

from itkm_lightning.models.losses import cluster_nce
from itkm_lightning.models.memory import ClusterMemory


def test_reset_builds_normalised_centroids_with_blocks():
    feats = F.normalize(torch.tensor([[1.0, 0.0], [1.0, 0.2], [0.0, 1.0], [0.3, 1.0], [5.0, 5.0]]), dim=1)
    labels = torch.tensor([0, 0, 1, 1, -1])
    blocks = torch.tensor([0, 0, 1, 1, 1])
    mem = ClusterMemory(2)
    mem.reset(feats, labels, blocks)
    assert mem.num_clusters == 2
    assert mem.blocks.tolist() == [0, 1]
    expected0 = F.normalize(feats[0] + feats[1], dim=0)
    assert torch.allclose(mem.features[0], expected0)


def test_logits_are_masked_to_the_samples_block_and_loss_matches_hand_value():
    mem = ClusterMemory(2)
    mem.features = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    mem.blocks = torch.tensor([0, 0, 1])
    f = torch.tensor([[1.0, 0.0]])
    logits = mem.logits(f, torch.tensor([0]), temperature=0.5)
    assert torch.isinf(logits[0, 2]) and logits[0, 2] < 0
    loss = cluster_nce(logits, torch.tensor([0]))
    # -log(e^{1/0.5} / (e^{1/0.5} + e^{0/0.5})) = log(1 + e^{-2})
    assert math.isclose(loss.item(), math.log(1 + math.exp(-2)), rel_tol=1e-6)


def test_momentum_update_follows_the_formula():
    mem = ClusterMemory(2, momentum=0.1)
    mem.features = torch.tensor([[1.0, 0.0]])
    mem.blocks = torch.tensor([0])
    f = torch.tensor([[0.0, 1.0]])
    mem.update(f, torch.tensor([0]))
    expected = F.normalize(torch.tensor([0.1, 0.9]), dim=0)
    assert torch.allclose(mem.features[0], expected)
