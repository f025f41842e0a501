"""The run behind ``itkm fit``: baselines -> Stage I -> Stage II -> Stage III (-> supervised), resumable stage by stage.

Every stage is a LightningModule that follows the stage protocol (docs/design.md, "Pipeline"):
``stage_name``, ``evaluates_images``, ``receive_handoff(handoffs)``, ``fit_kwargs(datamodule, stage_dir)`` and
``make_handoff(datamodule)``. Each stage trains with a fresh Trainer in ``<run_dir>/<stage>/`` and is finished
iff its ``handoff.pt`` exists; the hand-over (weights and data products, never optimizer state) is all the
next stage gets from it. The ``supervised`` reference (``supervised.enabled``) is an independent step: it starts
from the backbone as Stage I does, needs and receives no hand-over, and runs after Stage III.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.utilities import rank_zero_info

from itkm_lightning.checkpoints import check_resumable
from itkm_lightning.errors import ConfigError, ITKMError
from itkm_lightning.fit_config import DEFAULT_STAGE_CLASSES, SUPERVISED, build_section
from itkm_lightning.handoffs import Handoff, handoff_path, load_handoff, save_handoff
from itkm_lightning.resume import stage_resume_checkpoint
from itkm_lightning.results import ResultsFile, Timings
from itkm_lightning.safe_load import register_safe_types
from itkm_lightning.stages.protocol import ImageStage, Stage
from itkm_lightning.trainer_setup import TrainerSetup


class StageOrderError(ITKMError, RuntimeError):
    """A stage was asked for before the stages it builds on have finished."""


@dataclass(frozen=True)
class StageSpec:
    """One stage of the run and how its module is built: given already (``module``: Stage I, built by the CLI),
    or from its parsed ``class_path``/``init_args`` section when the stage runs.

    ``independent``: the stage starts from the backbone, not from the stages before it (the supervised
    reference): it needs and receives no hand-over, no stage waits for it, and its model is not the run's
    final one (figures, ``itkm embed --model <run_dir>``).
    """

    name: str
    module: L.LightningModule | None = None
    section: Any = None
    independent: bool = False

    def build(self) -> L.LightningModule:
        if self.module is not None:
            return self.module
        module = build_section(L.LightningModule, self.name, self.section)
        if not isinstance(module, Stage):
            raise ConfigError(f"{self.name}.class_path {self.section.class_path} does not follow the stage contract "
                              "(stages/protocol.py); name a stage class")
        if module.stage_name != self.name:
            raise ConfigError(f"{self.name}.class_path {self.section.class_path} is a {module.stage_name} module; "
                             f"set {self.name}.class_path to a {self.name} class")
        return module


@dataclass(frozen=True)
class SupervisedSpec(StageSpec):
    """The supervised reference, built from Stage I's module and ``supervised:`` (a SupervisedConfig)."""

    stage1: L.LightningModule | None = None
    supervised: Any = None
    independent: bool = True

    def build(self) -> L.LightningModule:
        return supervised_stage(self.stage1, self.supervised)


def stage_specs(stage1: L.LightningModule, cfg, supervised=None) -> list[StageSpec]:
    """The stages of a parsed ``fit`` config: ``model`` (built already), ``stage2``, ``stage3``, and the
    ``supervised`` reference when ``supervised`` (a :class:`~itkm_lightning.config.SupervisedConfig`) enables it."""
    specs = [StageSpec("stage1", module=stage1)]
    specs += [StageSpec(name, section=cfg.get(name)) for name in DEFAULT_STAGE_CLASSES]
    if supervised is not None and supervised.enabled:
        specs.append(SupervisedSpec(SUPERVISED, stage1=stage1, supervised=supervised))
    return specs


def supervised_stage(stage1: L.LightningModule, supervised) -> L.LightningModule:
    """The supervised reference: a fresh Stage I module with Stage I's arguments (backbone start, memory,
    temperature), ``supervised.optim`` in place of ``model.optim`` when set, and the ground-truth labeler."""
    from typing import get_type_hints

    from pydantic import TypeAdapter

    from itkm_lightning.stages.supervised import SupervisedStage1

    # Stage I's init args as saved (the CLI's copy holds config sections as dicts and adds `_instantiator`).
    types = get_type_hints(SupervisedStage1.__init__)
    args = {k: TypeAdapter(types[k]).validate_python(v) for k, v in stage1.hparams.items() if k in types}
    if supervised.optim is not None:
        args["optim"] = supervised.optim
    return SupervisedStage1(**args)


class Pipeline:
    """Runs the stages in order in one process (every DDP rank runs it the same way).

    Args:
        run_dir: where results.json, timings.json and one folder per stage go.
        datamodule: shared by every stage (set up once).
        stages: the stages, in order.
        trainers: builds each stage's Trainer (its checkpoints and logs under ``<run_dir>/<stage>``).
        stage1_trainer: Stage I's Trainer when the CLI built it already (LightningCLI builds one Trainer itself).
        command: the command that reruns this run without ``--stage`` (quoted in errors).
        seed: re-seeded before each stage is built, so a stage starts the same in a new process or the same one.
        rerank: ``evaluation.rerank`` (a RerankConfig) or None: every benchmark of every results row, baselines
            included, is scored on re-ranked distances.
    """

    def __init__(self, run_dir: str | Path, datamodule: L.LightningDataModule, stages: list[StageSpec],
                 trainers: TrainerSetup, command: str, seed: int | None = None, rerank=None,
                 stage1_trainer: L.Trainer | None = None) -> None:
        self.run_dir = Path(run_dir)
        self.datamodule = datamodule
        self.stages = list(stages)
        self.names = [s.name for s in self.stages]
        self.independent = {s.name for s in self.stages if s.independent}
        self.trainers = trainers
        self.stage1_trainer = stage1_trainer
        self.command = command
        self.seed = seed
        self.rerank = rerank
        self.results = ResultsFile(self.run_dir / "results.json")
        self.handoffs: dict[str, dict] = {}  # hand-overs as saved (to_dict), in memory (every rank has them)
        self.final_module: L.LightningModule | None = None  # the last image model trained in this process
        self.final_trainer: L.Trainer | None = None

    def stage_dir(self, name: str) -> Path:
        return self.run_dir / name

    def finished(self, name: str) -> bool:
        return handoff_path(self.run_dir, name).is_file()

    # ------------------------------------------------------------ plan
    def predecessors(self, name: str) -> list[str]:
        """The stages whose hand-overs ``name`` needs: those before it, except independent ones (none for those)."""
        if name in self.independent:
            return []
        return [n for n in self.names[: self.names.index(name)] if n not in self.independent]

    def plan(self, only: str | None) -> list[StageSpec]:
        """The stages this command trains, after checking that it can (nothing has run yet)."""
        if only is not None and only not in self.names:
            hint = " (the supervised reference runs when the config sets supervised.enabled: true)" if only == SUPERVISED else ""
            raise ConfigError(f"--stage {only}: this run has the stages {', '.join(self.names)}{hint}")
        chosen = self.stages if only is None else [self.stages[self.names.index(only)]]
        if only is not None:
            for before in self.predecessors(only):
                if not self.finished(before):
                    raise StageOrderError(
                        f"{only} needs the hand-over of {before} ({handoff_path(self.run_dir, before)}), which does "
                        f"not exist: run `{self.command} --stage {before}` first (or drop --stage to run every stage)"
                    )
        return [s for s in chosen if not self.finished(s.name)]

    def check(self, only: str | None = None, ckpt_path: str | None = None) -> list[StageSpec]:
        """The stages to train, or the reason this command cannot run (before anything is written)."""
        if ckpt_path is not None and only is None:
            raise ConfigError("--ckpt_path resumes one stage: add --stage (e.g. --stage stage1)")
        return self.plan(only)

    # ------------------------------------------------------------ run
    def run(self, only: str | None = None, ckpt_path: str | None = None) -> bool:
        """Train the stages still to do; True when they all finished (False: interrupted, or nothing to do)."""
        todo = self.check(only, ckpt_path)
        if not todo:
            done = only or ", ".join(self.names)
            rank_zero_info(f"{done} already finished in {self.run_dir}; pass another --run_dir to train again")
            self.results.print()  # no Trainer has launched other processes yet: this is the only one
            return False
        trainer = self._trainer(todo[0].name)
        timings = Timings(self.run_dir / "timings.json", write=trainer.is_global_zero)
        if trainer.local_rank == 0:  # other ranks wait at Lightning's own prepare_data barrier
            with timings.part("data"):
                self.datamodule.prepare_data()
        for i, spec in enumerate(todo):
            trainer = trainer if i == 0 else self._trainer(spec.name)
            if not self._run_stage(spec, trainer, timings, ckpt_path if only else None):
                return False
        if trainer.is_global_zero:
            self.results.print()
            timings.print()
        return True

    def _trainer(self, name: str) -> L.Trainer:
        if name == "stage1" and self.stage1_trainer is not None:
            return self.stage1_trainer
        return self.trainers.build(name)

    def _run_stage(self, spec: StageSpec, trainer: L.Trainer, timings: Timings, ckpt_path: str | None) -> bool:
        """Train one stage, record its results, write its hand-over; False when it was interrupted."""
        name, stage_dir = spec.name, self.stage_dir(spec.name)
        if self.seed is not None:
            L.seed_everything(self.seed, workers=True, verbose=False)
        module = spec.build()
        if isinstance(module, ImageStage):
            module.rerank = self.rerank
        module.receive_handoff(self._predecessor_handoffs(name, module))
        # The newest good end-of-epoch checkpoint, or a newer mid-epoch one that a SLURM requeue (SIGUSR1) left.
        resume = ckpt_path or stage_resume_checkpoint(stage_dir)
        if resume is not None:
            check_resumable(resume, module)  # another stage or backbone: one clear line, not a shape traceback
            rank_zero_info(f"resuming {name} from {resume}")
        elif name == self.names[0] or spec.independent:  # a stage that starts from the backbone
            self._baselines(module, trainer, timings)
        rank_zero_info(f"{name}: training in {stage_dir}")
        # Lightning reads the checkpoint again: weights_only, whatever the stage asks for.
        fit_kwargs = {**module.fit_kwargs(self.datamodule, stage_dir), "weights_only": True}
        register_safe_types()
        with timings.part(f"train_{name}"):
            trainer.fit(module, ckpt_path=None if resume is None else str(resume), **fit_kwargs)
        if trainer.interrupted:
            rank_zero_info(f"{name} was interrupted; run the same command again to resume it from its last checkpoint")
            return False
        if module.evaluates_images and not self._nothing_to_score():
            with timings.part(f"eval_{name}"):
                if module.benchmark_results_step != trainer.global_step or trainer.global_step == 0:
                    trainer.validate(module, datamodule=self.datamodule, verbose=False)  # the last epoch did not
            self.results.record(name, module.benchmark_results, write=trainer.is_global_zero)
        elif module.evaluates_images and self._pseudo_label_history(trainer):
            # Nothing to score (own footage without labels): what the last clustering found instead.
            last = self._pseudo_label_history(trainer)[-1]
            self.results.record_raw(f"{name}_pseudo_labels", last, write=trainer.is_global_zero)
            rank_zero_info(f"{name}: no labelled benchmark to score; pseudo-labels at epoch {last['epoch']}: "
                           + "; ".join(f"{b}: {v['num_clusters']} clusters, {v['num_outliers']} outliers"
                                       for b, v in last["blocks"].items()))
        for key, payload in module.extra_results().items():
            self.results.record_raw(key, payload, write=trainer.is_global_zero)
        with timings.part(f"handoff_{name}"):
            handoff = module.make_handoff(self.datamodule).to_dict()
            if trainer.is_global_zero:
                save_handoff(handoff_path(self.run_dir, name), handoff)
        self.handoffs[name] = handoff
        if module.evaluates_images and not spec.independent:  # figures show the last model of the method
            self.final_module, self.final_trainer = module, trainer
        rank_zero_info(f"{name} finished: hand-over written to {handoff_path(self.run_dir, name)}")
        return True

    def _nothing_to_score(self) -> bool:
        """The data has no benchmark with query and gallery images (ReIDDataModule.nothing_to_score)."""
        check = getattr(self.datamodule, "nothing_to_score", None)
        return bool(check()) if callable(check) else False

    @staticmethod
    def _pseudo_label_history(trainer) -> list[dict]:
        """The pseudo-label callback's per-clustering statistics (callbacks/pseudo_labels.py), [] without one."""
        for callback in getattr(trainer, "callbacks", []):
            history = getattr(callback, "history", None)
            if isinstance(history, list) and history:
                return history
        return []

    def _predecessor_handoffs(self, name: str, module: Stage) -> dict[str, Handoff]:
        """The hand-overs ``module`` receives, of the finished stages before ``name``: from this process when it
        made them, else from disk; either way through the type's ``from_dict``, so the stage gets the same."""
        handoffs = {}
        for before in self.predecessors(name):
            kind = module.receives.get(before)
            if kind is None:
                continue
            if before not in self.handoffs and self.finished(before):
                self.handoffs[before] = load_handoff(handoff_path(self.run_dir, before))
            if before in self.handoffs:
                handoffs[before] = kind.from_dict(self.handoffs[before])
        return handoffs

    def _baselines(self, module: L.LightningModule, trainer: L.Trainer, timings: Timings) -> None:
        """``untrained`` (the first stage before training) and ``raw_pixels``, once per run directory."""
        from itkm_lightning.baselines import raw_pixel_results

        write = trainer.is_global_zero
        if self._nothing_to_score():
            return  # own footage without labels: no baseline to score (fit reports pseudo-label statistics)
        if module.evaluates_images and "untrained" not in self.results:
            with timings.part("eval_untrained"):
                trainer.validate(module, datamodule=self.datamodule, verbose=False)
            self.results.record("untrained", module.benchmark_results, write=write)
        if "raw_pixels" not in self.results:
            with timings.part("eval_raw_pixels"):
                self.datamodule.setup("validate")
                self.results.record("raw_pixels", raw_pixel_results(self.datamodule.benchmarks,
                                                                       rerank=self.rerank), write=write)
