"""The ``itkm fit`` config: its sections, how it is parsed (``--config`` files, dotted overrides, types), and the
one place where a section that parsing leaves as configuration (a stage module, a strategy) becomes an object.

``model:`` is Stage I; ``stage2:``/``stage3:`` are LightningModule sections (``class_path`` + init args) built only
when the stage runs; ``trainer:``, ``data:``, ``epochs:``, ``evaluation:``, ``supervised:``, ``wandb:`` as declared
below. ``itkm fit`` (cli.py) runs this config; ``itkm evaluate`` and ``itkm embed`` read it (:func:`parse_fit_config`).
"""

from __future__ import annotations

import sys
from typing import Any, Literal, Optional

import lightning as L
from jsonargparse import ActionYesNo, ArgumentParser, Namespace
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from itkm_lightning.argument_parser import ITKMArgumentParser
from itkm_lightning.config_files import check_config_files, expand_path

STAGE_NAMES = ("stage1", "stage2", "stage3")
DEFAULT_STAGE_CLASSES = {
    "stage2": "itkm_lightning.stages.stage2.Stage2",
    "stage3": "itkm_lightning.stages.stage3.Stage3",
}
SUPERVISED = "supervised"  # the supervised reference step (stages/supervised.py), off unless configured
STAGE_CHOICES = ("all", *STAGE_NAMES, SUPERVISED, "1", "2", "3")


def selected_stage(value: str | None) -> str | None:
    """``--stage`` (one of STAGE_CHOICES, checked by its type): ``all``/None -> None (every stage), ``2`` or
    ``stage2`` -> ``stage2``, ``supervised``."""
    if value in (None, "all"):
        return None
    return f"stage{value}" if str(value).isdigit() else str(value)


def add_stage_arguments(parser) -> None:
    """``stage2:`` / ``stage3:`` sections: a LightningModule by ``class_path`` (default: the project's stage), with
    its init args given directly or under ``init_args``; ``backbone`` is linked from ``model.backbone``."""
    for name, class_path in DEFAULT_STAGE_CLASSES.items():
        parser.add_subclass_arguments(
            L.LightningModule, name, required=True, instantiate=False, default={"class_path": class_path},
            help=f"the {name} module (default {class_path}); its backbone is model.backbone",
        )
        parser.link_arguments("model.backbone", f"{name}.init_args.backbone")


def build_section(base: type, name: str, section: Namespace) -> Any:
    """The object a parsed ``class_path``/``init_args`` section ``name`` describes (a subclass of ``base``)."""
    parser = ArgumentParser()
    parser.add_subclass_arguments(base, name, required=False)
    return parser.instantiate_classes(Namespace(**{name: section}))[name]


class FitConfigCLI(LightningCLI):
    """The ``fit`` config's parser: sections, types and their checks; running it is cli.ITKMCLI's job."""

    def __init__(self, args: list[str] | None = None, run: bool = True) -> None:
        from itkm_lightning.data.datamodule import ReIDDataModule
        from itkm_lightning.stages.stage1 import Stage1

        super().__init__(
            model_class=Stage1,
            datamodule_class=ReIDDataModule,
            parser_class=ITKMArgumentParser,
            save_config_kwargs={"overwrite": True},
            parser_kwargs={"description": (
                "itkm-lightning: unsupervised multi-scenario person re-identification (ITKM). "
                "Trainer subcommands below; tools: `itkm prepare mlr ...` (build MLR sets), "
                "`itkm pretrain ...` (the demo's tiny CLIP), `itkm embed|search|export|report` (use a trained model). "
                "Each takes --help."
            )},
            auto_configure_optimizers=False,
            args=args,
            run=run,
        )

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        from itkm_lightning.config import EvaluationConfig, StageEpochs, SupervisedConfig, WandbConfig

        parser.add_argument(
            "--run_dir", type=Optional[str], default=None,
            help="where the run writes checkpoints, logs and results.json (default: runs/<config names joined by +>)",
        )
        parser.add_argument("--overwrite", action=ActionYesNo, default=False,
                            help="fit: if --run_dir holds a run with other settings, delete it and start again "
                                 "(a run with the same settings resumes as usual)")
        parser.add_argument("--resume_anyway", action=ActionYesNo, default=False,
                            help="fit: if --run_dir holds a run with other settings, continue it with these settings "
                                 "(finished stages are kept; run.json records the change)")
        parser.add_argument("--stage", type=Literal[STAGE_CHOICES], default="all",
                            help="fit: train one stage only (its predecessors must have finished; the supervised "
                                 "reference needs none); default all")
        parser.add_argument("--epochs", type=StageEpochs, default=StageEpochs(),
                            help="training epochs per stage (unset: trainer.max_epochs)")
        add_stage_arguments(parser)
        parser.add_argument("--evaluation", type=EvaluationConfig, default=EvaluationConfig(),
                            help="how benchmarks are scored: evaluation.rerank {k1, k2, lambda} re-ranks (off by default)")
        parser.add_argument("--supervised", type=SupervisedConfig, default=SupervisedConfig(),
                            help="the supervised reference (ground-truth identities in place of clustering, after "
                                 "Stage III, results row `supervised`): enabled, optim (default model.optim)")
        parser.add_argument("--wandb", type=WandbConfig, default=WandbConfig(),
                            help="Weights & Biases logging (mode: online | offline | disabled), see README")

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        # fit only: `itkm evaluate` scores a model (any stage, any config) where Lightning's validate/test could
        # only run Stage I's module, and `itkm embed` writes features (no predict step).
        return {"fit": LightningCLI.subcommands()["fit"]}

    def _parse_ckpt_path(self) -> None:
        """``--ckpt_path`` must be a training checkpoint that loads safely: one line for a junk file, a hand-over or a
        file holding code, before anything is built. Its hyper-parameters are not merged into ``model:`` (which is
        Stage I's, whatever stage wrote the checkpoint); the stage and backbone stamp is checked instead."""
        if not self.config.get("subcommand"):
            return
        ckpt_path = self.config[self.config.subcommand].get("ckpt_path")
        if ckpt_path:
            from itkm_lightning.checkpoints import read_checkpoint

            read_checkpoint(expand_path(ckpt_path))

    @staticmethod
    def _expand_data_root(cfg) -> None:
        if cfg.get("data") is not None and cfg.data.get("root"):
            cfg.data.root = str(expand_path(cfg.data.root))


class ConfigOnlyCLI(FitConfigCLI):
    """Parses and checks a ``fit`` config exactly as ``itkm fit`` does (files, overrides, types), builds nothing."""

    def before_instantiate_classes(self) -> None:
        self._expand_data_root(self.config)

    def _set_seed(self) -> None:
        pass  # reading a config seeds nothing (and says nothing about seeds)

    def instantiate_classes(self) -> None:
        pass


def parse_fit_config(configs: list[str], overrides: list[str] = ()):
    """The validated ``fit`` config (a jsonargparse Namespace) of ``--config`` files and dotted overrides."""
    args = [arg for config in configs for arg in ("--config", str(config))] + list(overrides)
    check_config_files(args)
    saved_argv, sys.argv = sys.argv, sys.argv[:1]  # LightningCLI warns when it sees another command's argv
    try:
        return ConfigOnlyCLI(args=args, run=False).config
    finally:
        sys.argv = saved_argv
