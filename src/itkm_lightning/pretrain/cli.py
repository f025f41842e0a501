"""``itkm pretrain``: render the captioned corpus, pretrain the tiny CLIP, save it, optionally score it zero-shot.

    itkm pretrain --config conf/pretrain.yaml                 # train (or reuse) data/pretrained/tiny-clip-demo
    itkm pretrain --config conf/pretrain.yaml --eval          # ... then score it zero-shot, write eval.json
    itkm pretrain --config conf/pretrain.yaml --print_config  # the full, resolved config
    itkm pretrain --config conf/pretrain.yaml --trainer.max_steps 300 --out /tmp/try

Sections: ``model:`` (:class:`CLIPPretraining`), ``data:`` (:class:`CorpusDataModule`), ``trainer:``
(``lightning.Trainer``), ``evaluation:`` (:class:`ZeroShotConfig`). The output folder is written
atomically (a temporary sibling renamed at the end) and reused afterwards when it was trained with
the same settings; a killed run leaves no folder that looks finished and restarts from scratch.
"""

from __future__ import annotations

import hashlib
import json
import time
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import torch
from jsonargparse import ActionConfigFile, ActionYesNo, Namespace
from jsonargparse.typing import NonNegativeInt
from lightning.pytorch.callbacks import RichProgressBar
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.utilities import rank_zero_info

from itkm_lightning.argument_parser import ITKMArgumentParser
from itkm_lightning.errors import ConfigError
from itkm_lightning.fileio import atomic_write_json, staging_directory
from itkm_lightning.models.backbone_config import BackboneConfig
from itkm_lightning.models.clip_loading import save_clip_directory
from itkm_lightning.models.tokenizer import clip_tokenizer
from itkm_lightning.synthetic.corpus import CORPUS_VERSION, CorpusSpec
from itkm_lightning.pretrain.datamodule import CorpusDataModule
from itkm_lightning.pretrain.module import CLIPPretraining
from itkm_lightning.pretrain.zero_shot import ZeroShotConfig, format_report, zero_shot_report

PRETRAIN_VERSION = "1"
"""Bump when the training code changes the weights for the same settings, so old folders are not reused."""
META_FILE = "pretrain_meta.json"
EVAL_FILE = "eval.json"
DEFAULT_OUT = "data/pretrained/tiny-clip-demo"
LOSS_WINDOW = 20
"""first_loss / final_loss in the meta file average this many steps (one step's loss is noisy)."""
TRAINER_KEYS_THAT_CHANGE_THE_MODEL = ("max_steps", "accumulate_grad_batches", "gradient_clip_val", "precision")


def build_parser() -> ITKMArgumentParser:
    parser = ITKMArgumentParser(prog="itkm pretrain", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", action=ActionConfigFile, help="YAML config (repeatable; later ones win)")
    parser.add_argument("--out", type=str, default=DEFAULT_OUT, help="folder of the pretrained CLIP (save_pretrained)")
    parser.add_argument("--eval", action=ActionYesNo, default=False,
                        help="score the model zero-shot on the synthetic benchmark and write <out>/eval.json")
    parser.add_argument("--seed_everything", type=int, default=0, help="seed of the weights' init and of training")
    parser.add_argument("--threads", type=NonNegativeInt, default=2, help="torch CPU threads (0: leave torch's default)")
    parser.add_class_arguments(CLIPPretraining, "model")
    parser.add_class_arguments(CorpusDataModule, "data")
    parser.add_class_arguments(L.Trainer, "trainer", instantiate=False, fail_untyped=False, sub_configs=True)
    parser.add_argument("--evaluation", type=ZeroShotConfig, default=ZeroShotConfig(), help="zero-shot benchmark")
    return parser


# ------------------------------------------------------------------------------------------ config checks
def _check_config(cfg: Namespace) -> None:
    if cfg.trainer.max_steps is None or cfg.trainer.max_steps <= 0:
        raise ConfigError("trainer.max_steps must be a positive number of steps (the learning-rate schedule needs it).")
    if tuple(cfg.data.image_size) != tuple(cfg.model.backbone.image_size):
        raise ConfigError(
            f"data.image_size {tuple(cfg.data.image_size)} differs from model.backbone.image_size "
            f"{tuple(cfg.model.backbone.image_size)}; set both to the benchmark's input size."
        )
    for key in ("callbacks", "logger", "plugins"):
        if cfg.trainer.get(key):
            raise ConfigError(f"trainer.{key} is set by `itkm pretrain` itself (progress bar, CSV log); remove it.")


def _plain(value: Any) -> Any:
    """Namespaces and pydantic models as JSON-able dicts (for the fingerprint and the meta file)."""
    if isinstance(value, Namespace):
        return {key: _plain(item) for key, item in vars(value).items()}
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json")
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    return value


def training_settings(cfg: Namespace) -> dict:
    """Everything that changes the trained weights (not paths, progress bars or evaluation)."""
    data = {key: value for key, value in _plain(cfg.data).items() if key not in ("root", "num_workers", "progress")}
    trainer = {key: _plain(cfg.trainer.get(key)) for key in TRAINER_KEYS_THAT_CHANGE_THE_MODEL}
    versions = {"pretrain": PRETRAIN_VERSION, "corpus": CORPUS_VERSION}
    return {"seed_everything": cfg.seed_everything, "model": _plain(cfg.model), "data": data, "trainer": trainer,
            "versions": versions}


def fingerprint(settings: dict) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


# ------------------------------------------------------------------------------------------ output folder
def finished_meta(out: Path) -> dict | None:
    """The meta record of a finished output folder, None when ``out`` does not exist."""
    if not out.exists():
        return None
    meta_path = out / META_FILE
    unfinished = FileExistsError(
        f"{out} exists but is not a finished `itkm pretrain` output; delete it or pass another --out."
    )
    if not (out.is_dir() and meta_path.is_file() and (out / "config.json").is_file()):
        raise unfinished
    try:
        return json.loads(meta_path.read_text())
    except json.JSONDecodeError:
        raise unfinished from None


def _trainer(cfg: Namespace, run_dir: Path) -> L.Trainer:
    kwargs = {key: value for key, value in _plain(cfg.trainer).items() if value is not None}
    kwargs.update(default_root_dir=str(run_dir), enable_checkpointing=False,
                  logger=CSVLogger(save_dir=str(run_dir), name="", version="logs"))
    if kwargs.get("enable_progress_bar", True) and not kwargs.get("callbacks"):
        kwargs["callbacks"] = [RichProgressBar()]
    return L.Trainer(**kwargs)


def pretrain(cfg: Namespace, out: Path) -> dict:
    """Render (or reuse) the corpus, train, and save model + tokenizer + meta into ``out`` atomically."""
    settings = training_settings(cfg)
    datamodule = build_datamodule(cfg)
    started = time.perf_counter()
    datamodule.prepare_data()
    corpus_seconds = time.perf_counter() - started
    fingerprint_value = fingerprint(settings)
    def finished_here(folder: Path) -> bool:
        return (finished_meta(folder) or {}).get("fingerprint") == fingerprint_value

    with staging_directory(out, finished_here) as temp_dir:
        L.seed_everything(cfg.seed_everything, verbose=False)
        model = build_module(cfg)
        trainer = _trainer(cfg, temp_dir)
        started = time.perf_counter()
        datamodule.setup("fit")
        load_seconds = time.perf_counter() - started
        started = time.perf_counter()
        trainer.fit(model, datamodule=datamodule)
        train_seconds = time.perf_counter() - started
        if trainer.interrupted or trainer.global_step < cfg.trainer.max_steps:
            raise RuntimeError(
                f"training stopped after {trainer.global_step} of {cfg.trainer.max_steps} steps; nothing saved."
            )
        save_clip_directory(model.to_clip_model(), clip_tokenizer(), temp_dir)
        meta = {
            "fingerprint": fingerprint_value,
            "settings": settings,
            "steps": trainer.global_step,
            "first_loss": _mean(model.loss_history[:LOSS_WINDOW]),
            "final_loss": _mean(model.loss_history[-LOSS_WINDOW:]),
            "corpus_images": len(datamodule.dataset) if datamodule.dataset is not None else None,
            "corpus_dir": str(datamodule.corpus_dir),
            "seconds": {"corpus_render_or_check": round(corpus_seconds, 1), "corpus_load": round(load_seconds, 1),
                        "train": round(train_seconds, 1)},
            "versions": {"torch": torch.__version__, "lightning": L.__version__},
        }
        (temp_dir / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    return meta


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def build_module(cfg: Namespace) -> CLIPPretraining:
    arguments = _plain(cfg.model)
    return CLIPPretraining(**{**arguments, "backbone": BackboneConfig(**arguments["backbone"])})


def build_datamodule(cfg: Namespace) -> CorpusDataModule:
    arguments = _plain(cfg.data)
    return CorpusDataModule(**{**arguments, "corpus": CorpusSpec(**arguments["corpus"])})


def ensure_pretrained(cfg: Namespace, out: Path) -> dict:
    """Train into ``out`` unless it already holds a model trained with the same settings."""
    meta = finished_meta(out)
    expected = fingerprint(training_settings(cfg))
    if meta is None:
        meta = pretrain(cfg, out)
        rank_zero_info(f"pretrained CLIP saved to {out}: {meta['steps']} steps, final loss {meta['final_loss']:.3f}, "
                       f"corpus {meta['seconds']['corpus_render_or_check']} s, training {meta['seconds']['train']} s")
    elif meta.get("fingerprint") != expected:
        raise ConfigError(f"{out} holds a CLIP pretrained with other settings; delete it or pass another --out.")
    else:
        rank_zero_info(f"reusing the pretrained CLIP in {out} (same settings)")
    return meta


# ------------------------------------------------------------------------------------------ entry point
def main(argv: list[str]) -> None:
    # Lightning's own deprecation noise about torch internals says nothing actionable to our users.
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    parser = build_parser()
    cfg = parser.parse_args(argv)  # --print_config prints and exits here
    _check_config(cfg)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    out = Path(cfg.out)
    ensure_pretrained(cfg, out)
    if cfg.eval:
        evaluation = ZeroShotConfig(**_plain(cfg.evaluation))
        report = zero_shot_report(out, evaluation, tuple(cfg.model.backbone.image_size))
        atomic_write_json(out / EVAL_FILE, report)
        print(format_report(report))
        print(f"written to {out / EVAL_FILE}")
