"""Small validated value types used as ``__init__`` argument types (and so as YAML config sections)."""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, model_validator


class ClusteringConfig(BaseModel):
    """Pseudo-label clustering of every (scenario, group) block (docs/method.md section 3)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    method: Literal["dbscan", "hdbscan"] = "dbscan"
    eps: float = Field(0.6, gt=0.0, lt=1.0, description="DBSCAN radius on the Jaccard distance, in (0, 1)")
    min_samples: int = Field(4, ge=1, description="DBSCAN min_samples / HDBSCAN min_cluster_size")
    k1: int = Field(30, ge=1, description="k-reciprocal neighbourhood size")
    k2: int = Field(6, ge=1, description="local query-expansion size, <= k1")
    backend: Literal["auto", "faiss", "torch"] = "auto"
    knn_index: Literal["exact", "ivf", "hnsw", "bf16"] = Field(
        "exact", description="kNN search: exact (default), or an approximate one: a faiss CPU index for CPU-only "
        "runs (ivf: IVF-Flat; hnsw: HNSW-Flat; labels then differ from the exact ones), or bf16 (torch: bfloat16 "
        "candidates re-scored in float32; fast on GPUs and CPUs with AMX/AVX512-BF16, same labels as exact on the "
        "benchmark, benchmarks/README.md)")
    knn_nprobe: int = Field(16, ge=1, description="knn_index=ivf: lists searched per query")
    knn_ef_search: int = Field(128, ge=1, description="knn_index=hnsw: candidates kept per query")

    def knn_options(self) -> dict:
        """Keywords of ``clustering.knn`` for this search."""
        return {"index": self.knn_index, "nprobe": self.knn_nprobe, "ef_search": self.knn_ef_search}

    @model_validator(mode="after")
    def _k2_not_above_k1(self) -> "ClusteringConfig":
        if self.k2 > self.k1:
            raise ValueError(f"k2 ({self.k2}) must not exceed k1 ({self.k1})")
        return self


class OptimConfig(BaseModel):
    """Adam with a lower learning rate for pretrained CLIP weights than for new parameters."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    lr: float = Field(5e-6, gt=0.0, description="learning rate of weights initialised from CLIP (extra patch branches included)")
    lr_new: float = Field(3.5e-4, gt=0.0, description="learning rate of parameters new to CLIP (the scenario embedding)")
    weight_decay: float = Field(5e-4, ge=0.0)
    warmup_epochs: int = Field(1, ge=0)
    schedule: Literal["cosine", "step", "constant"] = "cosine"
    step_epochs: list[int] = Field(default_factory=lambda: [20, 40], description="decay epochs for schedule=step")
    step_gamma: float = Field(0.1, gt=0.0, le=1.0)


class CHMConfig(BaseModel):
    """Stage III's cluster-level heterogeneous matching (docs/method.md section 6.3): which pairs are kept.

    Defaults measured on the demo (docs/design.md, "CHM reliability"): the modality gap puts every
    infrared-visible cosine near 0, so docs/method.md's absolute 0.5 keeps almost no vi pair; group-centred
    similarities with mutual nearest neighbours kept the most precise pairs on vi and cr.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    similarity: Literal["cosine", "centred"] = Field(
        "centred", description="cosine of the cluster centroids, or cosine after removing each group's mean "
                               "centroid (a direction shared by one group's features drops out)")
    reliability: Literal["threshold", "none", "mutual", "mutual_many", "quantile"] = Field(
        "mutual", description="which assigned pairs are kept: similarity >= threshold (docs/method.md); every pair "
                              "(PGM); pairs of mutual nearest neighbours (one partner each); mutual neighbours "
                              "that keep the many-to-one rounds' extra partners; similarity >= the quantile of "
                              "the scenario's assigned pairs")
    threshold: float = Field(0.5, ge=-1.0, le=1.0, description="smallest kept similarity (reliability=threshold)")
    quantile: float = Field(0.5, ge=0.0, lt=1.0,
                            description="fraction of the least similar assigned pairs dropped (reliability=quantile)")
    rounds: int = Field(2, ge=1, description="Hungarian rounds: 1 = one-to-one; 2 = docs/method.md's many-to-one round")
    text: bool = Field(False, description="average the centroid similarity with that of the clusters' text prototypes")


class StageEpochs(BaseModel):
    """Training epochs of each stage; unset = ``trainer.max_epochs``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    stage1: int | None = Field(None, ge=1, description="Stage I (homogeneous cluster contrast)")
    stage2: int | None = Field(None, ge=1, description="Stage II (text prompts over cached image features)")
    stage3: int | None = Field(None, ge=1, description="Stage III (heterogeneous matching, text-guided)")
    supervised: int | None = Field(None, ge=1, description="the supervised reference (ground-truth identities)")

    def of(self, stage: str, default: int | None) -> int | None:
        value = self.model_dump().get(stage)
        return default if value is None else value
class SupervisedConfig(BaseModel):
    """The supervised reference step (``supervised`` in results.json): an upper bound, not part of ITKM.

    Stage I's module and recipe trained with the ground-truth identities in place of clustering, as USL
    ReID papers report their supervised upper bound: one label and one memory entry per true person of a
    scenario, covering both of its groups, and P x K batches that mix both groups. It is the only
    place where ground-truth identities reach training; the unsupervised stages never see them.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = Field(False, description="run the step (after Stage III, in <run_dir>/supervised/)")
    optim: Optional[OptimConfig] = Field(
        None, description="optimiser and schedule; None: Stage I's model.optim")
    check_val_every_n_epoch: Optional[int] = Field(
        None, ge=1, description="validation cadence of this step (its final weights are always validated); "
                                "None: trainer.check_val_every_n_epoch")


class WandbConfig(BaseModel):
    """Weights & Biases logging next to the CSV logs; one W&B run per ``run_dir`` (all stages, resumed on requeue)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    mode: Literal["online", "offline", "disabled"] = Field(
        "disabled", description="online: stream to the server; offline: write <run_dir>/wandb for `wandb sync`")
    project: str = "itkm-lightning"
    entity: Optional[str] = None
    group: Optional[str] = Field(None, description="W&B group, e.g. one per sweep or per experiment series")
    tags: list[str] = Field(default_factory=list)


class RerankConfig(BaseModel):
    """k-reciprocal re-ranking of every benchmark's distances (Zhong et al., CVPR 2017; ``re_ranking``)."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    k1: int = Field(20, ge=1, description="k-reciprocal neighbourhood size")
    k2: int = Field(6, ge=1, description="local query expansion size (1 = none)")
    lambda_value: float = Field(0.3, ge=0.0, le=1.0, alias="lambda",
                                description="weight of the original distance in the re-ranked one")

    def as_dict(self) -> dict:
        """``{"k1", "k2", "lambda"}``, as written in configs and results.json."""
        return {"k1": self.k1, "k2": self.k2, "lambda": self.lambda_value}


class EvaluationConfig(BaseModel):
    """How benchmarks are scored, for every row of results.json (protocols: docs/protocols.md)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    rerank: Optional[RerankConfig] = Field(
        None, description="k-reciprocal re-ranking {k1, k2, lambda}; unset (default): plain 1 - cos ranking")
