"""Dynamic text representation update (DRU, docs/method.md section 6.2): pure functions on tensors.

Instance-level text ``u_i`` starts from the offline text feature of the image's Stage I cluster and drifts
towards the text of the image's current cluster after each re-clustering; cluster-level text ``t_c`` is
the normalised mean of its members' ``u``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from itkm_lightning.errors import ConfigError, DataFormatError


def centroids(features: torch.Tensor, labels: torch.Tensor, num_clusters: int) -> torch.Tensor:
    """L2-normalised mean feature of each label 0..num_clusters-1 (outliers, label -1, are ignored).

    A label without members gets a zero row.
    """
    keep = labels >= 0
    sums = features.new_zeros(num_clusters, features.shape[1])
    sums.index_add_(0, labels[keep], features[keep])
    return F.normalize(sums, dim=1)


def init_instance_text(
    text_features: torch.Tensor,
    stage1_labels: torch.Tensor,
    image_features: torch.Tensor,
    blocks: torch.Tensor,
) -> torch.Tensor:
    """``u_i = T_off[y_i]`` for Stage I members; an outlier takes the text of its nearest Stage I centroid.

    *Decision*: the nearest centroid is searched among the Stage I clusters of the outlier's own
    (scenario, group) block (image features of different groups are not comparable: another modality or
    view), and among all clusters only when its block has none.

    Args:
        text_features: ``T_off`` [C, P], row c = Stage I cluster c.
        stage1_labels: [N] Stage I labels, -1 = outlier.
        image_features: [N, D] L2-normalised image features (the encoder Stage III starts from).
        blocks: [N] block index of each instance.
    """
    num_clusters = text_features.shape[0]
    if stage1_labels.numel() and int(stage1_labels.max()) >= num_clusters:
        raise DataFormatError(
            f"Stage I labels go up to {int(stage1_labels.max())} but Stage II has {num_clusters} text features; "
            "the two handoffs come from different runs: re-run Stage II on this Stage I"
        )
    u = text_features.new_zeros(len(stage1_labels), text_features.shape[1])
    member = stage1_labels >= 0
    u[member] = text_features[stage1_labels[member]]
    outliers = torch.nonzero(~member).flatten()
    if outliers.numel():
        if not member.any():
            raise ConfigError("every Stage I label is -1 (no cluster): Stage III has no text to start from")
        cents = centroids(image_features, stage1_labels, num_clusters)
        cluster_block = torch.full((num_clusters,), -1, dtype=torch.long, device=blocks.device)
        cluster_block[stage1_labels[member]] = blocks[member]
        sims = image_features[outliers] @ cents.t()
        same_block = cluster_block[None, :] == blocks[outliers][:, None]
        has_own = same_block.any(dim=1, keepdim=True)
        allowed = same_block | ~has_own  # own block's clusters, or every cluster when the block has none
        allowed &= (cluster_block >= 0)[None, :]
        nearest = sims.masked_fill(~allowed, float("-inf")).argmax(dim=1)
        u[outliers] = text_features[nearest]
    return F.normalize(u, dim=1)


def cluster_text(u: torch.Tensor, labels: torch.Tensor, num_clusters: int) -> torch.Tensor:
    """Cluster-level text ``t_c = normalize(mean of u_i over members of c)``, [num_clusters, P]."""
    return centroids(u, labels, num_clusters)


def update_instance_text(u: torch.Tensor, labels: torch.Tensor, prototypes: torch.Tensor, alpha: float) -> torch.Tensor:
    """``u_i <- normalize(alpha*u_i + (1-alpha)*t_{label_i})``; outliers (label -1) keep their ``u``."""
    if not 0.0 <= alpha <= 1.0:
        raise ConfigError(f"DRU alpha must be in [0, 1]; got {alpha}")
    out = u.clone()
    member = labels >= 0
    out[member] = F.normalize(alpha * u[member] + (1.0 - alpha) * prototypes[labels[member]], dim=1)
    return out
