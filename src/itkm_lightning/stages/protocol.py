"""The stage contract: what a stage module (a ``LightningModule``) provides to ``itkm fit`` and the tools.

``pipeline.py`` builds each stage, gives it the hand-overs it ``receives``, trains it with a fresh Trainer,
scores it when it ``evaluates_images``, records its ``extra_results`` and saves its ``make_handoff``. The
project's stages implement it (``ReIDStage`` supplies the defaults of the image stages, ``Stage2`` its own);
a ``class_path`` in a config may name any class that does, such as the tests' stand-ins.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from itkm_lightning.handoffs import Handoff


@runtime_checkable
class Stage(Protocol):
    """Every stage of a run.

    Attributes:
        stage_name: its folder under the run directory, its key in ``results.json`` and its hand-over's name.
        evaluates_images: the pipeline validates the final weights and records ``results[stage_name]``
            (then the stage is also an :class:`ImageStage`).
        receives: the finished stages whose hand-overs it reads, each with its hand-over type
            (``{"stage1": Stage1Handoff}``); the pipeline passes exactly these, parsed by ``from_dict``.
        checkpoint_omits: state-dict prefixes its checkpoints leave out on purpose (a frozen tower rebuilt on
            load), so the resume check does not call the checkpoint incomplete.
        backbone_config: the image backbone it was built with (recorded in its checkpoints: a resume
            across backbones is refused); None for a stage without one.
    """

    stage_name: str
    evaluates_images: bool
    receives: Mapping[str, type[Handoff]]
    checkpoint_omits: tuple[str, ...]
    backbone_config: Any

    def receive_handoff(self, handoffs: Mapping[str, Handoff]) -> None:
        """Take the hand-overs of ``receives`` (all of them); called before every fit, resumes included."""

    def fit_kwargs(self, datamodule: Any, stage_dir: Path) -> dict:
        """Arguments of ``trainer.fit`` besides the module and ``ckpt_path`` (e.g. its own loaders)."""

    def make_handoff(self, datamodule: Any) -> Handoff:
        """What later stages and the tools get once it trained; every rank calls it (collectives allowed)."""

    def extra_results(self) -> dict[str, dict]:
        """``{key: payload}`` stored verbatim in ``results.json`` beside the scores (e.g. ``stage2_text``)."""


@runtime_checkable
class ImageStage(Stage, Protocol):
    """A stage whose weights are scored on the benchmarks (``evaluates_images`` is true).

    Attributes:
        rerank: the run's ``evaluation.rerank`` (a RerankConfig) or None, set by the pipeline before fit.
        benchmark_results: ``{benchmark: {metric: value}}`` of its latest validation.
        benchmark_results_step: the global step of that validation (-1: none yet), so the pipeline can
            reuse an end-of-training validation instead of running another.
    """

    rerank: Any
    benchmark_results: dict[str, dict[str, Any]]
    benchmark_results_step: int
