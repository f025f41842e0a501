"""Pseudo-labels for unsupervised ReID: k-reciprocal Jaccard distance + DBSCAN / HDBSCAN.

One job per module, in the order the data flows:

- ``knn_search``: the exact top-k inner-product search (faiss or torch; approximate IVF/HNSW on request);
- ``neighbourhoods``: k-reciprocal sets, their Gaussian weights, local query expansion;
- ``overlaps``: Jaccard distances from those weights (all pairs, or the pairs within eps; DDP row shares);
- ``jaccard``: ``jaccard_distance``, the steps above end to end (its docstring defines the distance);
- ``dbscan`` / ``hdbscan``: the two clusterings on the sparse distance; ``labels``: ``cluster``;
- ``blocks``: one clustering per (scenario, group) block, single-process or DDP, and its statistics
  (import it from ``itkm_lightning.clustering.blocks``: it brings torchmetrics and the DDP helpers, which
  re-ranking, ``itkm search`` and the functions above do not need).
"""

from itkm_lightning.clustering.inputs import FeatureArray
from itkm_lightning.clustering.jaccard import jaccard_distance
from itkm_lightning.clustering.knn_search import KnnBackend, KnnIndex, knn
from itkm_lightning.clustering.labels import cluster
from itkm_lightning.clustering.overlaps import RowShare

__all__ = ["FeatureArray", "KnnBackend", "KnnIndex", "RowShare", "cluster", "jaccard_distance", "knn"]
