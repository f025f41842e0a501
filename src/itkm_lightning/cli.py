"""``itkm fit``: prepares the run directory from the parsed config (fit_config.py), checks the data, and runs the
pipeline (pipeline.py) with one Trainer setup (trainer_setup.py); then the run's figures."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path
from typing import Any

from lightning.pytorch.utilities import rank_zero_info

from itkm_lightning.config_files import expand_path, run_name
from itkm_lightning.errors import ConfigError, DataUnavailableError, ITKMError
from itkm_lightning.fit_config import FitConfigCLI
from itkm_lightning.stages.protocol import ImageStage
from itkm_lightning.tracking import default_run_dir, finish_wandb


class ITKMCLI(FitConfigCLI):
    """``itkm fit``: the three stages and the optional supervised reference (pipeline.py). Scoring a trained
    model is ``itkm evaluate`` (tools/evaluate.py)."""

    def _set_seed(self) -> None:
        # Lightning replaces `seed_everything: true` by the seed it draws; the run's settings keep `true`, so
        # that the same command resumes (a drawn seed differs every time).
        self._requested_seed = self._get(self.config, "seed_everything")
        super()._set_seed()

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
                raise ConfigError("--weights_only false is not supported: a checkpoint could run code when loaded")
            cfg.weights_only = True  # Lightning's own checkpoint loading, too (our config classes are allow-listed)
        self._run_plan = None
        if self.subcommand in (None, "fit"):
            from itkm_lightning.run_record import check_run_dir, run_settings

            settings = run_settings(cfg)
            if self._requested_seed is True:
                settings["seed_everything"] = True
            self._run_plan = check_run_dir(cfg.run_dir, settings, overwrite=bool(cfg.get("overwrite")),
                                           resume_anyway=bool(cfg.get("resume_anyway")))
        self._fill_seeds(cfg)  # after the record: it keeps `null`, "follows seed_everything", as a drawn seed needs

    @staticmethod
    def _fill_seeds(cfg) -> None:
        """``data.seed`` and ``stage2.seed`` left unset take ``seed_everything``: a run's one seed varies its
        initialisation, batch order and augmentations alike (Lightning's seed reaches neither sampler)."""
        seed = _seed_or_zero(cfg.get("seed_everything"))
        for section in (cfg.get("data"), (cfg.get("stage2") or {}).get("init_args")):
            if section is not None and "seed" in section and section.seed is None:
                section.seed = seed

    def instantiate_classes(self) -> None:
        self._check_data_sources()
        super().instantiate_classes()
        if isinstance(self.model, ImageStage):  # fit's Stage I scores with evaluation.rerank too
            self.model.rerank = self._evaluation().rerank

    def _evaluation(self):
        from itkm_lightning.config import EvaluationConfig

        evaluation = self._get(self.config_init, "evaluation")
        return evaluation if isinstance(evaluation, EvaluationConfig) else EvaluationConfig()

    def _check_data_sources(self) -> None:
        """Missing datasets are reported (all of them) before minutes go into loading a backbone."""
        from itkm_lightning.data.names import source_of

        cfg = self.config[self.subcommand] if self.subcommand else self.config
        data = cfg.get("data")
        if data is None:
            return
        root = Path(data.get("root") or "data")
        problems = []
        for entry in [*(data.get("sources") or []), *(data.get("test_sources") or [])]:
            try:
                source_of(entry).check(root)
            except ITKMError as err:  # a dataset's own report; anything else is a bug and keeps its traceback
                problems.append(str(err).strip())
        if problems:
            raise DataUnavailableError.listing(problems)

    @property
    def run_dir(self) -> Path:
        return Path(self._get(self.config, "run_dir"))

    def instantiate_trainer(self, **kwargs: Any):
        """Stage I's Trainer (LightningCLI builds one); every stage's Trainer comes from one TrainerSetup."""
        from jsonargparse import Namespace

        from itkm_lightning.trainer_setup import TrainerSetup

        cfg = self.config[self.subcommand] if self.subcommand else self.config
        strategy = (cfg.get("trainer") or {}).get("strategy")
        supervised = self._get(self.config_init, "supervised")
        self.trainer_setup = TrainerSetup(
            run_dir=self.run_dir,
            trainer=self._get(self.config_init, "trainer", default={}),
            # A name such as "ddp" builds a fresh strategy per Trainer anyway; a class_path section is rebuilt.
            strategy=strategy if isinstance(strategy, Namespace) and strategy.get("class_path") else None,
            epochs=self._get(self.config_init, "epochs"),
            seed=_seed_or_zero(self._get(self.config, "seed_everything")),
            wandb=self._get(self.config_init, "wandb"),
            supervised_val_every=supervised.check_val_every_n_epoch if supervised is not None else None,
            save_config=(self.save_config_callback(self._parser(self.subcommand), cfg, **self.save_config_kwargs)
                         if self.save_config_callback else None),
        )
        return self.trainer_setup.build("stage1")

    # ------------------------------------------------------------ fit
    def fit(self, model, datamodule=None, ckpt_path: str | None = None, **kwargs: Any) -> None:
        """Baselines -> Stage I -> Stage II -> Stage III (-> supervised), resumable: re-running the same command
        continues."""
        from itkm_lightning.fit_config import selected_stage
        from itkm_lightning.pipeline import Pipeline, stage_specs

        cfg = self.config[self.subcommand] if self.subcommand else self.config
        only = selected_stage(cfg.get("stage"))
        pipeline = Pipeline(
            self.run_dir, datamodule, stage_specs(model, cfg, self._get(self.config_init, "supervised")),
            self.trainer_setup, command=self._rerun_command(cfg),
            seed=_seed_or_none(cfg.get("seed_everything")),  # false: the stages are not re-seeded
            rerank=self._evaluation().rerank, stage1_trainer=self.trainer,
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


def main(argv: list[str]) -> None:
    """``itkm fit ...`` (the ``itkm`` entry point, command.py, reports its errors)."""
    # Lightning's own deprecation noise about torch internals says nothing actionable to our users.
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    # Resuming a stage reopens its folders on purpose: CSVLogger appends to metrics.csv (despite its warning) and
    # the checkpoint is replaced after the next epoch.
    warnings.filterwarnings("ignore", message=".*(logs directory|Checkpoint directory) .* exists and is not empty.*")
    # LightningCLI reads sys.argv itself; handing it the same list avoids its "args and argv" warning.
    saved_argv, sys.argv = sys.argv, [sys.argv[0] if sys.argv else "itkm", *argv]
    try:
        ITKMCLI()
    finally:
        sys.argv = saved_argv


def _seed_or_none(seed) -> int | None:
    """``seed_everything``'s value as an int, None where it is false or unset (``False`` is an int in Python, and
    Lightning reads false as "do not seed", not as seed 0)."""
    return seed if isinstance(seed, int) and not isinstance(seed, bool) else None


def _seed_or_zero(seed) -> int:
    """The run's seed as an int: ``seed_everything``'s value, 0 where it is false or unset."""
    seed = _seed_or_none(seed)
    return 0 if seed is None else seed
