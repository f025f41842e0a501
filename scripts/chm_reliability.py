"""CHM's number of pairs and precision for each reliability criterion, offline, from a stage hand-over.

Loads the encoder and pseudo-labels of a Stage I (or Stage III) hand-over, extracts the training set's
clustering features, builds the cluster centroids as Stage III's memory does (normalised sum of the
members' normalised ``f``) and runs CHM with each criterion. A pair is right when both clusters have the
same majority hidden identity (the ``match/*/chm_precision`` of Stage III's monitoring). Reads the
hidden identities: a measurement, never a training signal.

    PYTHONPATH=src python scripts/chm_reliability.py runs/demo/stage1/handoff.pt [--preset demo --seed 0]
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch
import torch.nn.functional as F

from itkm_lightning.callbacks.heterogeneous import majority_identity
from itkm_lightning.data.datamodule import ReIDDataModule
from itkm_lightning.data.sources import SyntheticBenchmark
from itkm_lightning.fileio import atomic_write_text
from itkm_lightning.matching import group_centred_similarity, match_clusters
from itkm_lightning.models.backbone_config import BackboneConfig
from itkm_lightning.stages.stage1 import Stage1

CRITERIA = [  # (name, centred similarity, reliability, threshold, quantile)
    ("threshold 0.5 (main)", False, "threshold", 0.5, 0.5),
    ("threshold 0 (CCLNet)", False, "threshold", 0.0, 0.5),
    ("none (PGM)", False, "none", 0.5, 0.5),
    ("mutual NN", False, "mutual", 0.5, 0.5),
    ("quantile 0.5", False, "quantile", 0.5, 0.5),
    ("centred, threshold 0", True, "threshold", 0.0, 0.5),
    ("centred, none", True, "none", 0.5, 0.5),
    ("centred, mutual NN", True, "mutual", 0.5, 0.5),
    ("centred, mutual many-to-one", True, "mutual_many", 0.5, 0.5),
    ("centred, quantile 0.5", True, "quantile", 0.5, 0.5),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("handoff", help="<run_dir>/stage1/handoff.pt or <run_dir>/stage3/handoff.pt")
    parser.add_argument("--preset", default="demo")
    parser.add_argument("--seed", type=int, default=0, help="the synthetic benchmark's seed")
    parser.add_argument("--root", default="data")
    parser.add_argument("--image_size", type=int, nargs=2, default=[128, 64])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--json", help="also write the table here")
    args = parser.parse_args()

    torch.set_num_threads(max(1, torch.get_num_threads()))
    handoff = torch.load(args.handoff, map_location="cpu", weights_only=False)
    dm = ReIDDataModule(sources=[SyntheticBenchmark(preset=args.preset, seed=args.seed)], root=args.root,
                        image_size=tuple(args.image_size), test_batch_size=256, num_workers=1)
    dm.prepare_data()
    dm.setup("fit")
    backbone = handoff.get("backbone") or {}
    cfg = BackboneConfig.model_validate(backbone) if backbone else BackboneConfig(
        name_or_path="data/pretrained/tiny-clip-demo", image_size=args.image_size)
    module = Stage1(backbone=cfg)
    module.encoder.load_state_dict(handoff["encoder"])
    features = F.normalize(module.extract(dm.cluster_dataloader()), dim=1)

    labels = torch.as_tensor(handoff["labels"]).long()
    if labels.numel() != features.shape[0]:
        raise SystemExit(f"{labels.numel()} labels for {features.shape[0]} training images: another data config")
    blocks = torch.from_numpy(dm.block_of_index).long()
    num_clusters = int(labels.max()) + 1
    kept = labels >= 0
    centroids = F.normalize(torch.zeros(num_clusters, features.shape[1]).index_add_(0, labels[kept], features[kept]),
                            dim=1)
    cluster_block = torch.full((num_clusters,), -1, dtype=torch.long)
    cluster_block[labels[kept]] = blocks[kept]
    _, identity = np.unique([s.identity for s in dm.train_samples], return_inverse=True)
    majority = majority_identity(labels.numpy(), identity, num_clusters)

    names = list(dm.blocks)
    table: dict[str, dict[str, dict[str, float]]] = {}
    for b0, (scenario, group) in enumerate(names):
        if group != 0 or (scenario, 1) not in names:
            continue
        b1 = names.index((scenario, 1))
        c0 = torch.nonzero(cluster_block == b0).flatten()
        c1 = torch.nonzero(cluster_block == b1).flatten()
        m0, m1 = majority[c0.numpy()], majority[c1.numpy()]
        reachable = int(np.isin(m0, m1).sum())  # group-0 clusters whose identity has a cluster in group 1
        raw = (centroids[c0] @ centroids[c1].t()).double().numpy()
        centred = group_centred_similarity(centroids[c0], centroids[c1]).double().numpy()
        row = {"_": {"clusters_g0": len(c0), "clusters_g1": len(c1), "reachable": reachable,
                     "raw_sim_mean": float(raw.mean())}}
        for name, centre, reliability, threshold, quantile in CRITERIA:
            sim = centred if centre else raw
            pairs = match_clusters(sim, threshold, args.rounds, reliability, quantile)
            right = m0[pairs[:, 0]] == m1[pairs[:, 1]]
            row[name] = {"pairs": int(len(pairs)), "right": int(right.sum()),
                         "precision": float(right.mean()) if len(pairs) else float("nan")}
        table[scenario] = row

    print(f"{args.handoff}: CHM on {args.preset} (benchmark seed {args.seed}), {args.rounds} rounds")
    for scenario, row in table.items():
        info = row["_"]
        print(f"\n{scenario}: {info['clusters_g0']} x {info['clusters_g1']} clusters, {info['reachable']} group-0 "
              f"clusters have their identity among group 1's, mean raw cosine {info['raw_sim_mean']:.3f}")
        for name, r in row.items():
            if name != "_":
                print(f"  {name:28s} pairs {r['pairs']:4d}  right {r['right']:4d}  precision {r['precision']:.3f}")
    if args.json:
        atomic_write_text(args.json, json.dumps(table, indent=1))


if __name__ == "__main__":
    main()
