"""The ``itkm`` entry point: ``itkm --help`` and the tools start without Lightning or transformers (cli.py has them).

Importing Lightning and transformers costs seconds; ``itkm --help``, ``itkm report`` and ``itkm search`` on
``itkm embed`` folders need neither, so only ``itkm fit`` (and the tools that run a model) import them.
"""

from __future__ import annotations

import sys

TOOLS = {
    # subcommand -> "module:function(argv)"; tools that are not a Trainer method get their own parser.
    "evaluate": "itkm_lightning.tools.evaluate:main",
    "pretrain": "itkm_lightning.pretrain.cli:main",
    "prepare": "itkm_lightning.prepare:main",
    "embed": "itkm_lightning.tools.embed:main",
    "search": "itkm_lightning.tools.search:main",
    "export": "itkm_lightning.tools.export:main",
    "report": "itkm_lightning.tools.report:main",
}

HELP = """usage: itkm [-h] {fit,evaluate,embed,search,export,report,prepare,pretrain} ...

itkm-lightning: unsupervised multi-scenario person re-identification (ITKM).

commands (each takes --help):
  fit        train: baselines, Stage I, II, III (and the optional supervised reference) into a run directory
             (--config FILE ..., dotted overrides such as --data.root /datasets, --print_config)
  evaluate   score a trained model (run dir, .ckpt or handoff.pt) on the benchmarks of a data config, no training
             (--rerank: k-reciprocal re-ranking; data.test_sources: test on other datasets than trained on)
  embed      features of images or of a config's split -> OUT/features.npy + OUT/index.csv
  search     top-k gallery images per query (`itkm embed` folders or images); --evaluate scores mAP/CMC
  export     the image encoder as TorchScript / ONNX
  report     one HTML page of a run's results and figures
  prepare    build derived datasets (e.g. `itkm prepare mlr ...`)
  pretrain   the demo's tiny CLIP

Python: `from itkm_lightning import FeatureExtractor` (README, "Python API").
"""


def run_tool(name: str, argv: list[str]) -> None:
    import importlib

    module, func = TOOLS[name].split(":")
    getattr(importlib.import_module(module), func)(argv)


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``itkm`` console script and ``python -m itkm_lightning``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        sys.stdout.write(HELP)
        if not argv:
            raise SystemExit(2)  # no command is a usage error, as argparse has it
        return
    from itkm_lightning.config_files import check_config_files
    from itkm_lightning.errors import reported_as_one_line
    from itkm_lightning.host_memory import keep_freed_memory

    keep_freed_memory()  # before any tensor: CPU steps reuse freed activations instead of faulting in new pages

    tool = argv[0] if argv[0] in TOOLS else None
    with reported_as_one_line(f"itkm {tool}" if tool else "itkm"):
        check_config_files(argv)
        if tool:
            run_tool(tool, argv[1:])
        else:
            from itkm_lightning.cli import main as fit_main  # only now: it imports Lightning

            fit_main(argv)


if __name__ == "__main__":
    main()
