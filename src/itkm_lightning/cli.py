"""The ``itkm`` command: LightningCLI conventions (``--config``, ``--print_config``, dotted overrides)."""

from __future__ import annotations

import os
import re
import sys
import warnings
from pathlib import Path
from typing import Any, Literal, Optional

from jsonargparse import ActionYesNo
from lightning.pytorch.callbacks import RichProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.utilities import rank_zero_info

from itkm_lightning.config_files import check_config_files, expand_path, run_name
from itkm_lightning.tracking import default_run_dir, finish_wandb, wandb_logger


def one_line_parse_error(message: str) -> str:
    """Condense jsonargparse's (and nested pydantic's) multi-line reasons into ``key = value: reason``."""
    lines = [line.strip().lstrip("- ").strip() for line in str(message).splitlines() if line.strip()]
    key = re.search(r'Parser key "([^"]+)"', str(message))
    got = re.search(r"(?:Got|Given) value: (.*)$", str(message), flags=re.MULTILINE)
    reasons = []
    for line in lines:
        if line.startswith(("Input should", "Value error", "Expected a", "Assertion failed")):
            reason = re.sub(r"\s*\[type=.*$", "", line).removeprefix("Value error, ")
            reason = re.sub(r"\. Got value: .*$", "", reason)
            if reason not in reasons:
                reasons.append(reason)
    if key is not None and "Union subtypes" in message and "Given value type: <class 'dict'>" in message:
        # A class_path entry where a short name (str) is also allowed: its own error, not "expected str".
        errors = str(message).split("Errors:", 1)[-1].split("Given value type:")[0]
        items = [" ".join(part.split()) for part in re.split(r"\n\s*- ", errors) if part.strip()]
        items = [item for item in items if not item.startswith("Expected a <class 'str'>")]
        if items:
            return f"{key.group(1)}: {items[0]}"
    if key is None:
        unknown = re.fullmatch(r"Option '([^']+)' is not accepted", lines[0]) if lines else None
        if unknown:  # jsonargparse does not say where: an init_args key that the named class does not take
            return (f"{lines[0]}: no class_path in the config takes an argument {unknown.group(1)!r} "
                    "(misspelled init_args key?)")
        return lines[0] if lines else "invalid arguments"
    expected = [re.sub(r"<class '(\w+)'>", r"\1", r.removeprefix("Expected a ")).replace("NoneType", "None")
                .replace("typing.Literal[", "one of [")
                for r in reasons if r.startswith("Expected a ")]
    if expected:
        reasons = [f"expected {' or '.join(expected)}"] + [r for r in reasons if not r.startswith("Expected a ")]
    value = f" = {got.group(1).strip()}" if got else ""
    rest = [line.strip() for line in str(message)[key.end():].lstrip(":").strip().splitlines() if line.strip()]
    why = "; ".join(reasons) if reasons else (" ".join(rest[:3]) if rest else "invalid value")
    return f"{key.group(1)}{value}: {why}"


class ITKMArgumentParser(LightningArgumentParser):
    """Parse errors end with one line naming the key and what is allowed, not a page of usage."""

    def error(self, message: str, ex: Exception | None = None):  # type: ignore[override]
        sys.stderr.write(f"itkm: error: {one_line_parse_error(message)}\n"
                         "  (run with --help for the options, --print_config for the full config)\n")
        raise SystemExit(2)


class ITKMCLI(LightningCLI):
    """``itkm fit``: the three stages and the optional supervised reference (pipeline.py). Scoring a trained
    model is ``itkm evaluate`` (tools/evaluate.py)."""

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
        from itkm_lightning.config import StageEpochs
        from itkm_lightning.pipeline import STAGE_CHOICES, add_stage_arguments

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
        from itkm_lightning.config import EvaluationConfig, SupervisedConfig, WandbConfig

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

    def _set_seed(self) -> None:
        # Lightning replaces `seed_everything: true` by the seed it draws; the run's settings keep `true`, so
        # that the same command resumes (a drawn seed differs every time).
        self._requested_seed = self._get(self.config, "seed_everything")
        super()._set_seed()

    @staticmethod
    def _expand_data_root(cfg) -> None:
        if cfg.get("data") is not None and cfg.data.get("root"):
            cfg.data.root = str(expand_path(cfg.data.root))

    # ------------------------------------------------------------ run directory
    def before_instantiate_classes(self) -> None:
        cfg = self.config[self.subcommand] if self.subcommand else self.config
        self._expand_data_root(cfg)
        if not cfg.get("run_dir"):
            cfg.run_dir = str(default_run_dir(run_name(cfg.get("config") or [])))
        cfg.run_dir = str(expand_path(cfg.run_dir))
        cfg.trainer.default_root_dir = cfg.run_dir
        if cfg.get("ckpt_path"):
            cfg.ckpt_path = str(expand_path(cfg.ckpt_path))
        if "weights_only" in cfg:
            if cfg.weights_only is False:
                raise ValueError("--weights_only false is not supported: a checkpoint could run code when loaded")
            cfg.weights_only = True  # Lightning's own checkpoint loading, too (our config classes are allow-listed)
        self._run_plan = None
        if self.subcommand in (None, "fit"):
            from itkm_lightning.run_record import check_run_dir, run_settings

            settings = run_settings(cfg)
            if self._requested_seed is True:
                settings["seed_everything"] = True
            self._run_plan = check_run_dir(cfg.run_dir, settings, overwrite=bool(cfg.get("overwrite")),
                                           resume_anyway=bool(cfg.get("resume_anyway")))

    def instantiate_classes(self) -> None:
        self._check_data_sources()
        super().instantiate_classes()
        if hasattr(self.model, "rerank"):  # fit's Stage I scores with evaluation.rerank too
            self.model.rerank = self._evaluation().rerank

    def _evaluation(self):
        from itkm_lightning.config import EvaluationConfig

        evaluation = self._get(self.config_init, "evaluation")
        return evaluation if isinstance(evaluation, EvaluationConfig) else EvaluationConfig()

    def _check_data_sources(self) -> None:
        """Missing datasets are reported (all of them) before minutes go into loading a backbone."""
        from itkm_lightning.config_files import source_of

        cfg = self.config[self.subcommand] if self.subcommand else self.config
        data = cfg.get("data")
        if data is None:
            return
        root = Path(data.get("root") or "data")
        problems = []
        for entry in [*(data.get("sources") or []), *(data.get("test_sources") or [])]:
            try:
                source_of(entry).check(root)
            except (FileNotFoundError, NotADirectoryError, ValueError) as err:
                problems.append(str(err).strip())
        if len(problems) == 1:
            raise FileNotFoundError(problems[0])
        if problems:  # all of them at once: fixing one, rerunning and meeting the next costs a job each time
            raise FileNotFoundError(f"{len(problems)} configured datasets are not usable:\n"
                                    + "\n".join(f"({i}) {p}" for i, p in enumerate(problems, 1)))

    @property
    def run_dir(self) -> Path:
        return Path(self._get(self.config, "run_dir"))

    def instantiate_trainer(self, stage: str | None = None, **kwargs: Any):
        """A fresh Trainer for one stage, writing into ``<run_dir>/<stage>/`` (pipeline.stage_trainer_kwargs)."""
        from lightning.pytorch.plugins.io import CheckpointIO

        from itkm_lightning.pipeline import stage_trainer_kwargs

        stage = stage or ("stage1" if self.subcommand in (None, "fit") else self.subcommand)
        trainer_cfg = self._get(self.config_init, "trainer", default={})
        epochs = self._get(self.config_init, "epochs")
        kwargs.setdefault("max_epochs", epochs.of(stage, trainer_cfg.get("max_epochs")) if epochs else None)
        seed = self._get(self.config, "seed_everything")
        ours = stage_trainer_kwargs(self.run_dir / stage, seed if isinstance(seed, int) and not isinstance(seed, bool) else 0)
        kwargs["default_root_dir"] = ours["default_root_dir"]
        if trainer_cfg.get("logger") in (None, True):
            kwargs["logger"] = [ours["logger"]]
            wandb = wandb_logger(self._get(self.config_init, "wandb"), self.run_dir, stage)
            if wandb is not None:
                kwargs["logger"].append(wandb)
        callbacks = list(trainer_cfg.get("callbacks") or []) + ours["callbacks"]
        plugins = list(trainer_cfg.get("plugins") or [])
        if not any(isinstance(p, CheckpointIO) for p in plugins):
            kwargs["plugins"] = [*plugins, *ours["plugins"]]
        if not sys.stdout.isatty() and trainer_cfg.get("enable_progress_bar") is None:
            # A log file (SLURM): a progress bar writes a line per refresh. Set trainer.enable_progress_bar to decide.
            kwargs["enable_progress_bar"] = False
        elif trainer_cfg.get("enable_progress_bar", True) is not False and not any(
            isinstance(c, RichProgressBar) for c in callbacks
        ):
            callbacks.append(RichProgressBar())
        kwargs["callbacks"] = callbacks
        if stage != "stage1":
            kwargs.update(self._fresh_strategy())
        supervised = self._get(self.config_init, "supervised")
        if stage == "supervised" and supervised is not None and supervised.check_val_every_n_epoch is not None:
            kwargs["check_val_every_n_epoch"] = supervised.check_val_every_n_epoch
        # Pseudo-label batches need our own rank-aware sampler and a fresh loader after every re-clustering.
        kwargs["use_distributed_sampler"] = False
        kwargs["reload_dataloaders_every_n_epochs"] = 1
        return super().instantiate_trainer(**kwargs)

    def _fresh_strategy(self) -> dict:
        """A new instance of a configured strategy object for a later stage's Trainer: Lightning binds a strategy
        to the accelerator of the Trainer that used it, so Stage I's cannot be handed to the next one."""
        from jsonargparse import ArgumentParser, Namespace
        from lightning.pytorch.strategies import Strategy

        section = (self.config[self.subcommand] if self.subcommand else self.config).get("trainer") or {}
        strategy = section.get("strategy")
        if not (isinstance(strategy, Namespace) and strategy.get("class_path")):
            return {}  # a name such as "ddp" builds a fresh strategy per Trainer anyway
        parser = ArgumentParser()
        parser.add_subclass_arguments(Strategy, "strategy")
        return {"strategy": parser.instantiate_classes(Namespace(strategy=strategy)).strategy}

    # ------------------------------------------------------------ fit
    def fit(self, model, datamodule=None, ckpt_path: str | None = None, **kwargs: Any) -> None:
        """Baselines -> Stage I -> Stage II -> Stage III (-> supervised), resumable: re-running the same command
        continues."""
        from itkm_lightning.pipeline import Pipeline, selected_stage, stage_specs

        cfg = self.config[self.subcommand] if self.subcommand else self.config
        only = selected_stage(cfg.get("stage"))
        pipeline = Pipeline(
            self.run_dir, datamodule, stage_specs(model, cfg, self._get(self.config_init, "supervised")),
            make_trainer=lambda stage: self.trainer if stage == "stage1" else self.instantiate_trainer(stage),
            command=self._rerun_command(cfg),
            seed=cfg.get("seed_everything") if isinstance(cfg.get("seed_everything"), int) else None,
            rerank=self._evaluation().rerank,
        )
        pipeline.check(only, ckpt_path)  # a command that cannot run writes nothing, not even run.json
        if self._run_plan is not None:
            self._run_plan.commit(self._rerun_command(cfg), write=self.trainer.is_global_zero)
        try:
            finished = pipeline.run(only=only, ckpt_path=ckpt_path)
            if finished and pipeline.final_module is not None and pipeline.final_trainer.is_global_zero:
                from itkm_lightning.results import Timings

                with Timings(self.run_dir / "timings.json").part("figures"):
                    self._write_figures(pipeline.final_module, datamodule, pipeline.final_trainer)
        finally:
            finish_wandb()  # one W&B run per run directory; a later run in this process starts its own

    def _rerun_command(self, cfg) -> str:
        configs = " ".join(f"--config {c}" for c in (cfg.get("config") or []))
        return f"itkm fit {configs} --run_dir {self.run_dir}".replace("  ", " ")

    def _write_figures(self, model, datamodule, trainer) -> None:
        """Figures into <run_dir>/figures (and W&B); a plotting failure warns and never costs the run."""
        try:
            from itkm_lightning.tools.run_figures import log_figures_to_wandb, write_run_figures

            figures = write_run_figures(self.run_dir, model, datamodule)
            log_figures_to_wandb(trainer, figures)
            rank_zero_info(f"figures: {len(figures)} PNGs in {self.run_dir / 'figures'} (`itkm report {self.run_dir}` "
                           "puts them on one page)")
        except Exception as err:  # noqa: BLE001 - the trained model and results are already saved
            warnings.warn(f"figures were not written ({type(err).__name__}: {err}); the run itself is complete",
                          stacklevel=1)


class ConfigOnlyCLI(ITKMCLI):
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


def _known_errors() -> tuple[type[BaseException], ...]:
    from pydantic import ValidationError

    from itkm_lightning.callbacks.guards import NonFiniteLossError
    from itkm_lightning.clustering.blocks import EmptyClusteringError
    from itkm_lightning.data.dataset import UnreadableImageError
    from itkm_lightning.models.clip_loading import BackboneUnavailableError
    from itkm_lightning.pipeline import StageOrderError

    return (ValueError, FileNotFoundError, NotADirectoryError, ValidationError, BackboneUnavailableError,
            UnreadableImageError, EmptyClusteringError, NonFiniteLossError, ImportError, StageOrderError)


def _error_line(err: BaseException) -> str:
    from pydantic import ValidationError

    if isinstance(err, ValidationError) and err.errors():
        first = err.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()))
        msg = str(first.get("msg", "")).removeprefix("Value error, ")
        return f"invalid {err.title}{' ' + where if where else ''}: {msg}"
    text = str(err).strip()
    if text.startswith("Caught ") and "Original Traceback" in text:
        # Re-raised from a DataLoader worker: the original message is the last line, after "Type: ".
        last = text.splitlines()[-1]
        return last.split(": ", 1)[1] if ": " in last else last
    # Our messages may carry a few more lines (an expected folder layout); keep them, indented.
    lines = text.splitlines()[:60] if text else [type(err).__name__]
    return "\n  ".join(lines)


from itkm_lightning.command import TOOLS, run_tool as _run_tool  # noqa: E402  (the light entry point's list)


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``itkm`` console script and ``python -m itkm_lightning``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):  # the same overview as the light entry point (command.py)
        from itkm_lightning.command import main as light_main

        return light_main(argv)
    if argv and argv[0] in TOOLS:
        try:
            check_config_files(argv)
            _run_tool(argv[0], argv[1:])
        except _known_errors() as err:
            if os.environ.get("ITKM_DEBUG"):
                raise
            sys.stderr.write(f"itkm {argv[0]}: error: {_error_line(err)}\n  (set ITKM_DEBUG=1 for the full traceback)\n")
            raise SystemExit(2) from None
        return
    # Lightning's own deprecation noise about torch internals says nothing actionable to our users.
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    # Resuming a stage reopens its folders on purpose: CSVLogger appends to metrics.csv (despite its warning) and
    # the checkpoint is replaced after the next epoch.
    warnings.filterwarnings("ignore", message=".*(logs directory|Checkpoint directory) .* exists and is not empty.*")
    # LightningCLI reads sys.argv itself; handing it the same list avoids its "args and argv" warning.
    saved_argv, sys.argv = sys.argv, [sys.argv[0] if sys.argv else "itkm", *argv]
    try:
        check_config_files(argv)
        ITKMCLI()
    except _known_errors() as err:
        if os.environ.get("ITKM_DEBUG"):
            raise
        message = _error_line(err)
        sys.stderr.write(f"itkm: error: {message}\n  (set ITKM_DEBUG=1 for the full traceback)\n")
        raise SystemExit(2) from None
    finally:
        sys.argv = saved_argv


if __name__ == "__main__":
    main()
