"""Stage III's pure pieces against their formulas: CHM assignment, DRU, IHM sets, L_chm / L_ihm / L_txt."""

import itertools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from itkm_lightning.callbacks.heterogeneous import majority_identity, matching_quality
from itkm_lightning.matching import (
    group_centred_similarity,
    instance_positives,
    match_clusters,
    partner_table,
    topk_other,
)
from itkm_lightning.models.losses import chm_loss, ihm_loss, multi_positive_nce, text_contrastive_loss
from itkm_lightning.text_update import cluster_text, init_instance_text, update_instance_text

# 3 group-0 clusters (rows) x 2 group-1 clusters (cols). Greedy would take (0, 0) first; the optimum of
# sum exp(-sim) is (0, 1) + (1, 0); row 2 is left for the second round, where its best column is 1.
SIM = np.array([[0.90, 0.80],
                [0.85, 0.10],
                [0.30, 0.60]])


def brute_force_assignment(sim: np.ndarray) -> set[tuple[int, int]]:
    """Minimum of sum exp(-sim) over every one-to-one assignment of the smaller side (rows > cols here)."""
    best, best_cost = None, math.inf
    for rows in itertools.permutations(range(sim.shape[0]), sim.shape[1]):
        cost = sum(math.exp(-sim[r, c]) for c, r in enumerate(rows))
        if cost < best_cost:
            best, best_cost = {(r, c) for c, r in enumerate(rows)}, cost
    return best


def test_first_round_is_the_optimal_assignment_not_the_greedy_one():
    pairs = match_clusters(SIM, threshold=-1.0, rounds=1)
    assert {tuple(p) for p in pairs.tolist()} == brute_force_assignment(SIM) == {(0, 1), (1, 0)}


def test_second_round_matches_the_larger_sides_leftovers_many_to_one():
    pairs = {tuple(p) for p in match_clusters(SIM, threshold=0.5).tolist()}
    leftover = 2
    assert pairs == brute_force_assignment(SIM) | {(leftover, int(np.argmax(SIM[leftover])))}
    # the same with the sides swapped (larger side = columns)
    swapped = {tuple(p) for p in match_clusters(SIM.T, threshold=0.5).tolist()}
    assert swapped == {(c, r) for r, c in pairs}


def test_threshold_drops_pairs_below_it_without_reassigning():
    pairs = {tuple(p) for p in match_clusters(SIM, threshold=0.82).tolist()}
    assert pairs == {(r, c) for r, c in {(0, 1), (1, 0), (2, 1)} if SIM[r, c] >= 0.82} == {(1, 0)}
    assert match_clusters(np.zeros((0, 3))).shape == (0, 2)


def pair_set(pairs: np.ndarray) -> set[tuple[int, int]]:
    return {tuple(p) for p in pairs.tolist()}


def test_reliability_criteria_other_than_the_threshold_ignore_a_global_offset():
    rng = np.random.default_rng(0)
    sim = rng.uniform(-0.2, 0.2, size=(6, 5)) + 0.8 * np.eye(6, 5)  # cluster i of one group is cluster i of the other
    shifted = sim - 0.6  # a gap between the groups lowers every similarity alike
    for reliability in ("none", "mutual", "mutual_many", "quantile"):
        assert pair_set(match_clusters(shifted, reliability=reliability)) == \
            pair_set(match_clusters(sim, reliability=reliability)), reliability
    assert pair_set(match_clusters(sim, reliability="mutual")) == {(i, i) for i in range(5)}
    assert len(match_clusters(sim, reliability="none")) == 6  # 5 one-to-one + row 5 in round 2
    assert len(match_clusters(sim, reliability="quantile", quantile=0.5)) == 3
    assert len(match_clusters(sim, threshold=0.5)) == 5 and len(match_clusters(shifted, threshold=0.5)) == 0
    with pytest.raises(ValueError, match="reliability"):
        match_clusters(sim, reliability="best")


def test_mutual_neighbours_drop_the_pairs_of_a_hub():
    # column 0 is every row's nearest (a hub); only row 0 is column 0's nearest
    sim = np.array([[0.9, 0.1, 0.0],
                    [0.8, 0.7, 0.0],
                    [0.7, 0.0, 0.6]])
    assert pair_set(match_clusters(sim, reliability="none")) == {(0, 0), (1, 1), (2, 2)}
    assert pair_set(match_clusters(sim, reliability="mutual")) == {(0, 0)}


def test_mutual_many_keeps_one_persons_two_outfits_matched_to_one_clothes_free_view():
    # rows: person A in outfit 1, A in outfit 2, person B; columns: A's clothes-free view, B's
    sim = np.array([[0.9, 0.1],
                    [0.7, 0.2],
                    [0.1, 0.8]])
    assert pair_set(match_clusters(sim, reliability="none")) == {(0, 0), (1, 0), (2, 1)}  # round 2 adds (1, 0)
    assert pair_set(match_clusters(sim, reliability="mutual")) == {(0, 0), (2, 1)}  # one partner per column
    assert pair_set(match_clusters(sim, reliability="mutual_many")) == {(0, 0), (1, 0), (2, 1)}
    assert pair_set(match_clusters(sim.T, reliability="mutual_many")) == {(0, 0), (0, 1), (1, 2)}  # sides swapped
    # round 2 assigns row 1 to column 1, but its nearest is column 0: dropped; row 3 joins row 0 on column 0
    assert pair_set(match_clusters(np.array([[0.9, 0.1], [0.3, 0.2], [0.1, 0.8], [0.5, 0.0]]),
                                   reliability="mutual_many")) == {(0, 0), (2, 1), (3, 0)}
    # one-to-one assignments: the same pairs as mutual nearest neighbours
    square = np.array([[0.9, 0.8, 0.0], [0.8, 0.7, 0.0], [0.7, 0.0, 0.6]])
    assert pair_set(match_clusters(square, reliability="mutual_many")) == \
        pair_set(match_clusters(square, reliability="mutual"))


def test_centred_similarity_removes_a_direction_shared_by_one_group():
    torch.manual_seed(0)
    people = F.normalize(torch.randn(8, 32), dim=1)
    gap = 3.0 * F.normalize(torch.randn(32), dim=0)  # every group-1 feature carries it
    group0 = F.normalize(people + 0.1 * torch.randn(8, 32), dim=1)
    group1 = F.normalize(people + 0.1 * torch.randn(8, 32) + gap, dim=1)
    raw = (group0 @ group1.t()).double().numpy()
    centred = group_centred_similarity(group0, group1).double().numpy()
    assert raw.max() < 0.5 and len(match_clusters(raw, threshold=0.5)) == 0
    assert pair_set(match_clusters(centred, reliability="mutual")) == {(i, i) for i in range(8)}
    # one cluster on a side: no mean to remove there, the cosine stays finite and meaningful
    single = group_centred_similarity(group0[:1], group1)
    assert torch.isfinite(single).all() and int(single.argmax()) == 0


def test_partner_is_the_most_similar_kept_pair():
    pairs = match_clusters(SIM, threshold=0.5)
    of_row, of_col = partner_table(pairs, SIM)
    assert of_row.tolist() == [1, 0, 1]
    assert of_col.tolist() == [1, 0]  # col 1 has rows 0 (0.80) and 2 (0.60): row 0 wins


def test_dru_formulas_on_small_tensors():
    text = F.normalize(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]), dim=1)
    stage1 = torch.tensor([0, 1, 2, -1, -1])
    blocks = torch.tensor([0, 0, 1, 0, 1])
    img = F.normalize(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.1], [0.1, 1.0], [0.0, 1.0]]), dim=1)
    u = init_instance_text(text, stage1, img, blocks)
    assert torch.allclose(u[:3], text[[0, 1, 2]])
    # outlier 3 (block 0) is nearest to cluster 1's centroid; outlier 4 (block 1) may only take cluster 2,
    # although cluster 1's centroid is closer in image space
    assert torch.allclose(u[3], text[1]) and torch.allclose(u[4], text[2])

    new = torch.tensor([0, 0, 1, 1, -1])
    t = cluster_text(u, new, 2)
    assert torch.allclose(t[0], F.normalize(u[0] + u[1], dim=0))
    assert torch.allclose(t[1], F.normalize(u[2] + u[3], dim=0))
    alpha = 0.5
    out = update_instance_text(u, new, t, alpha)
    for i in range(4):
        assert torch.allclose(out[i], F.normalize(alpha * u[i] + (1 - alpha) * t[new[i]], dim=0))
    assert torch.allclose(out[4], u[4])  # outliers keep their text
    with pytest.raises(ValueError, match="alpha"):
        update_instance_text(u, new, t, 1.5)


def test_dru_rejects_text_from_another_run():
    with pytest.raises(ValueError, match="re-run Stage II"):
        init_instance_text(torch.eye(2), torch.tensor([0, 5]), torch.eye(2), torch.tensor([0, 0]))


def test_ihm_is_the_intersection_of_image_and_text_neighbours():
    # block 0: instances 0, 1; block 1 (its pair): instances 2, 3, 4; block 2 has no pair.
    img = F.normalize(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.1], [0.9, 0.5], [0.0, 1.0], [1.0, 1.0]]), dim=1)
    txt = F.normalize(torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0], [1.0, 0.2], [1.0, 0.0], [1.0, 1.0]]), dim=1)
    blocks = torch.tensor([0, 0, 1, 1, 1, 2])
    other = torch.tensor([1, 0, -1])
    pos = instance_positives(img, txt, blocks, other, k=2)
    sets = [set(row[row >= 0].tolist()) for row in pos]

    def expected(i):
        cand = torch.nonzero(blocks == other[blocks[i]]).flatten()
        by_img = set(cand[(img[cand] @ img[i]).topk(2).indices].tolist())
        by_txt = set(cand[(txt[cand] @ txt[i]).topk(2).indices].tolist())
        return by_img & by_txt

    assert sets[0] == expected(0) == {3}  # image: 2, 3; text: 4, 3
    assert sets[1] == expected(1)
    assert sets[2] == expected(2)
    assert sets[5] == set()  # no paired block: empty set
    assert pos.shape == (6, 2)


def test_ihm_text_neighbours_keep_every_candidate_tied_with_the_kth():
    """u is constant inside a cluster, so a whole cluster ties in text space: the intersection must keep the
    image neighbours of that cluster, whichever 10 of its 20 members they are (issue 13, defect 1)."""
    k, dim = 10, 64
    eye = torch.eye(dim)
    # other group (block 1): cluster A = 20 members, cluster B = 20 members
    img_a = [F.normalize(eye[0 if j < 10 else 1] + 0.1 * eye[2 + j], dim=0) for j in range(20)]
    img_b = [eye[30 + j] for j in range(20)]
    queries = [eye[0], eye[1]]  # image top-10: members 0-9 of A, then members 10-19 of A
    img = torch.stack(queries + img_a + img_b)
    text = torch.stack([eye[0]] * 2 + [eye[0]] * 20 + [eye[1]] * 20)[:, :8]  # per-cluster constant u
    blocks = torch.tensor([0, 0] + [1] * 40)
    other = torch.tensor([1, 0])
    members_a = set(range(2, 22))
    for order in (torch.arange(42), torch.cat([torch.arange(2), 2 + torch.randperm(40, generator=torch.Generator().manual_seed(0))])):
        pos = instance_positives(img[order], text[order], blocks, other, k=k)
        for q in range(2):
            found = {int(order[i]) for i in pos[q][pos[q] >= 0]}
            image_top = {int(order[2 + i]) for i in (img[order][2:] @ img[order][q]).topk(k).indices}
            assert found == image_top and found <= members_a and len(found) == k


def test_ihm_text_neighbours_still_cut_at_k_without_ties():
    """Distinct text similarities: the text top-k is exactly k candidates, as before."""
    img = F.normalize(torch.tensor([[1.0, 0.0]] + [[1.0, 0.01 * j] for j in range(6)]), dim=1)
    text = F.normalize(torch.tensor([[1.0, 0.0]] + [[1.0, 0.2 * (5 - j)] for j in range(6)]), dim=1)
    pos = instance_positives(img, text, torch.tensor([0] + [1] * 6), torch.tensor([1, 0]), k=3)
    # image top-3: candidates 1, 2, 3 (smallest angle); text top-3: 6, 5, 4 -> no overlap
    assert (pos[0] < 0).all()
    pos = instance_positives(img, text, torch.tensor([0] + [1] * 6), torch.tensor([1, 0]), k=4)
    assert set(pos[0][pos[0] >= 0].tolist()) == {3, 4}  # image 1-4, text 6-3


def test_topk_chunks_give_the_same_answer(monkeypatch):
    import itkm_lightning.matching as matching

    q, c = torch.randn(7, 4), torch.randn(9, 4)
    full = topk_other(q, c, 3)
    monkeypatch.setattr(matching, "IHM_BLOCK_ELEMENTS", 9)  # one row per chunk
    assert torch.equal(topk_other(q, c, 3), full)


def test_chm_loss_against_hand_formula():
    f = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    centroids = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0], [0.8, 0.6]])
    centroid_blocks = torch.tensor([0, 1, 1, 2])
    other = torch.tensor([1, 1])
    partners = torch.tensor([1, -1])  # sample 1's cluster is unmatched: it is left out
    tau = 0.5
    loss = chm_loss(f, centroids, centroid_blocks, other, partners, tau)
    s_pos, s_neg = 0.6 / tau, 0.0 / tau  # sample 0 against clusters 1 (target) and 2 of block 1
    assert math.isclose(loss.item(), -math.log(math.exp(s_pos) / (math.exp(s_pos) + math.exp(s_neg))), rel_tol=1e-6)
    none = chm_loss(f, centroids, centroid_blocks, other, torch.tensor([-1, -1]), tau)
    assert none.item() == 0.0


def test_ihm_loss_against_hand_formula():
    f = torch.tensor([[1.0, 0.0], [0.0, 1.0]], requires_grad=True)
    bank = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0], [1.0, 0.0]])
    bank_blocks = torch.tensor([1, 1, 1, 0])
    other = torch.tensor([1, 1])
    positives = torch.tensor([[0, 1], [-1, -1]])  # sample 1 has an empty set
    tau = 0.5
    loss = ihm_loss(f, bank, bank_blocks, other, positives, tau)
    s = [1.0 / tau, 0.6 / tau, 0.0 / tau]  # sample 0 against bank rows 0, 1, 2 (row 3 is its own block)
    expected = -math.log((math.exp(s[0]) + math.exp(s[1])) / sum(math.exp(x) for x in s))
    assert math.isclose(loss.item(), expected, rel_tol=1e-5)
    empty = ihm_loss(f, bank, bank_blocks, other, torch.full((2, 2), -1), tau)
    assert empty.item() == 0.0
    empty.backward()  # a zero loss still has a graph
    assert multi_positive_nce(torch.zeros(1, 2), torch.zeros(1, 2, dtype=torch.bool)).item() == 0.0


def test_text_loss_against_hand_formula():
    v = torch.tensor([[2.0, 0.0]])  # not normalised: the loss uses cosine
    prototypes = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    prototype_blocks = torch.tensor([0, 0, 1])
    scale = 10.0
    loss = text_contrastive_loss(v, prototypes, prototype_blocks, torch.tensor([0]), torch.tensor([1]), scale)
    expected = -math.log(math.exp(0.0) / (math.exp(scale * 1.0) + math.exp(0.0)))
    assert math.isclose(loss.item(), expected, rel_tol=1e-5)


def test_text_loss_label_smoothing_spreads_over_the_own_block_only():
    """eps 0.1: (1 - eps) * -log p_y + eps * mean over the K clusters of the sample's block (CLIP-ReID)."""
    torch.manual_seed(0)
    v, prototypes = torch.randn(5, 8), F.normalize(torch.randn(7, 8), dim=1)
    prototype_blocks = torch.tensor([0, 0, 0, 1, 1, 1, 1])
    sample_blocks = torch.tensor([0, 0, 1, 1, 1])
    labels = torch.tensor([0, 2, 3, 6, 4])
    scale = 10.0
    plain = text_contrastive_loss(v, prototypes, prototype_blocks, sample_blocks, labels, scale)
    smoothed = text_contrastive_loss(v, prototypes, prototype_blocks, sample_blocks, labels, scale, label_smoothing=0.1)
    assert torch.isfinite(smoothed) and not torch.isclose(smoothed, plain)
    expected = []
    for i in range(5):
        own = torch.nonzero(prototype_blocks == sample_blocks[i]).flatten()
        logits = scale * F.normalize(v[i], dim=0) @ prototypes[own].t()
        target = int(torch.nonzero(own == labels[i]))
        expected.append(F.cross_entropy(logits[None], torch.tensor([target]), label_smoothing=0.1))
        log_p = F.log_softmax(logits, dim=0)
        assert torch.isclose(expected[-1], 0.9 * -log_p[target] - 0.1 * log_p.mean())
    assert torch.isclose(smoothed, torch.stack(expected).mean(), rtol=1e-5)
    with pytest.raises(ValueError, match="smoothing"):
        text_contrastive_loss(v, prototypes, prototype_blocks, sample_blocks, labels, scale, label_smoothing=1.0)


def test_matching_quality_counts_right_pairs_and_positives():
    labels = np.array([0, 0, 1, 1, 2, -1])
    identity = np.array([7, 7, 7, 8, 9, 9])
    blocks = np.array([0, 0, 1, 1, 1, 1])
    assert majority_identity(labels, identity, 3).tolist() == [7, 7, 9]  # cluster 1: tie 7/8 -> smaller code
    chm = {"vi": np.array([[0, 1], [0, 2]])}
    positives = np.array([[2, -1], [4, 5], [-1, -1], [-1, -1], [-1, -1], [-1, -1]])
    hits = np.array([True, False, True, True, False, True])
    stats = matching_quality(labels, identity, blocks, [("vi", 0), ("vi", 1)], chm, positives, hits, 3)["vi"]
    assert stats["chm_pairs"] == 2 and stats["chm_precision"] == 0.5
    assert stats["ihm_size"] == pytest.approx(3 / 6) and stats["ihm_nonempty"] == pytest.approx(2 / 6)
    assert stats["ihm_precision"] == pytest.approx(1 / 3)  # 0->2 right (7, 7); 1->4, 1->5 wrong
    assert stats["text_agreement"] == pytest.approx(3 / 5)  # the outlier does not count
