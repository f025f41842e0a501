"""``itkm export``: the trained image encoder as TorchScript (``torch.jit.trace``), a ``torch.export`` program or ONNX.

The exported graph maps ``(pixel_values, scenario, group) -> L2-normalised f``; inputs are CLIP-normalised
(B, 3, H, W) crops of the backbone's image size (written beside the model in ``<model>.json``).
"""

from __future__ import annotations

import argparse
import importlib.util
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from itkm_lightning.data.transforms import CLIP_MEAN, CLIP_STD
from itkm_lightning.errors import ConfigError, ITKMError, MissingPackageError
from itkm_lightning.fileio import atomic_path, atomic_write_json
from itkm_lightning.models.clip_image import CLIPImageEncoder
from itkm_lightning.tools.model_source import load_image_encoder

PARITY_TOLERANCE = 1e-5  # max |exported - eager| over the normalised features, checked after every export


class ExportParityError(ITKMError, ValueError):
    """The exported model does not reproduce the checkpoint's features (nothing is written)."""


class ExportableEncoder(nn.Module):
    """The encoder with its group routing written as arithmetic instead of Python branching.

    ``CLIPImageEncoder`` sends each image through its own group's patch conv by selecting batch rows, a
    data-dependent branch that a trace would freeze to the example batch. Here every branch runs on
    every image and a 0/1 mask keeps the right one: the same numbers for any mix of groups (group
    values outside [0, num_groups) give zero patch tokens; the eager encoder rejects them).
    """

    def __init__(self, encoder: CLIPImageEncoder) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, pixel_values: Tensor, scenario: Tensor, group: Tensor) -> Tensor:
        enc = self.encoder
        if hasattr(enc, "export_forward"):  # the timm tower routes its stems itself (models/timm_tower.py)
            return F.normalize(enc.export_forward(pixel_values, scenario, group), dim=1)
        patches = None
        for index, branch in enumerate(enc.patch_embeddings):
            tokens = branch(pixel_values).flatten(2).transpose(1, 2)
            if len(enc.patch_embeddings) > 1:
                tokens = tokens * (group == index).to(tokens.dtype)[:, None, None]
            patches = tokens if patches is None else patches + tokens
        hidden = enc.encoder(inputs_embeds=enc.pre_layernorm(enc.tokens_from_patches(patches, scenario)))[0]
        return F.normalize(enc.post_layernorm(hidden[:, 0]), dim=1)


def example_inputs(encoder: CLIPImageEncoder, batch: int = 4, seed: int = 0) -> tuple[Tensor, Tensor, Tensor]:
    """A batch that mixes every scenario and group, so a trace and a parity check see each branch."""
    generator = torch.Generator().manual_seed(seed)
    height, width = encoder.cfg.image_size
    pixels = torch.randn(batch, 3, height, width, generator=generator)
    scenario = torch.arange(batch) % encoder.cfg.num_scenarios
    group = torch.arange(batch) % encoder.cfg.num_groups
    return pixels, scenario, group


@torch.no_grad()
def eager_features(encoder: CLIPImageEncoder, inputs: tuple[Tensor, Tensor, Tensor]) -> Tensor:
    return F.normalize(encoder(*inputs).f, dim=1)


def export_torchscript(encoder: CLIPImageEncoder, path: str | Path) -> Path:
    path = Path(path)
    module = ExportableEncoder(encoder.eval()).eval()
    with torch.no_grad(), warnings.catch_warnings():
        # torch >= 2.10 flags TorchScript as deprecated (it still loads in C++ and every torch), and HF's SDPA
        # attention turns `is_causal` (always False for the vision tower) into a constant: neither changes the graph.
        warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.jit")
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        traced = torch.jit.trace(module, example_inputs(encoder), check_trace=False)
    with atomic_path(path) as tmp:
        traced.save(str(tmp))
    return path


def _dynamic_batch() -> dict:
    batch = torch.export.Dim("batch", min=1)
    return {"pixel_values": {0: batch}, "scenario": {0: batch}, "group": {0: batch}}


def export_program(encoder: CLIPImageEncoder, path: str | Path) -> Path:
    """``torch.export`` (``.pt2``, any batch size): TorchScript's successor; load with ``torch.export.load``."""
    path = Path(path)
    module = ExportableEncoder(encoder.eval()).eval()
    with torch.no_grad():
        program = torch.export.export(module, example_inputs(encoder), dynamic_shapes=_dynamic_batch())
    with atomic_path(path) as tmp:  # it keeps the suffix, which torch.export wants
        torch.export.save(program, str(tmp))
    return path


def onnx_available() -> bool:
    return all(importlib.util.find_spec(name) is not None for name in ("onnx", "onnxscript"))


def export_onnx(encoder: CLIPImageEncoder, path: str | Path, opset: int = 18) -> Path:
    if not onnx_available():
        raise MissingPackageError("ONNX export needs the onnx and onnxscript packages: pip install onnx onnxscript "
                                  "(and onnxruntime to check the result), or export --format torchscript")
    path = Path(path)
    module = ExportableEncoder(encoder.eval()).eval()
    with atomic_path(path) as tmp:
        torch.onnx.export(module, example_inputs(encoder), str(tmp), input_names=["pixel_values", "scenario", "group"],
                          output_names=["features"], opset_version=opset, dynamo=True, dynamic_shapes=_dynamic_batch())
    return path


def load_exported(path: str | Path):
    """A callable ``(pixel_values, scenario, group) -> features`` from an exported file (.pt, .pt2 or .onnx)."""
    path = Path(path)
    if path.suffix == ".pt2":
        return torch.export.load(str(path)).module()
    if path.suffix == ".onnx":
        if importlib.util.find_spec("onnxruntime") is None:
            raise MissingPackageError("checking an ONNX export needs onnxruntime: pip install onnxruntime")
        import onnxruntime

        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])

        def run(*inputs: Tensor) -> Tensor:
            feeds = {"pixel_values": inputs[0].numpy(), "scenario": inputs[1].numpy(), "group": inputs[2].numpy()}
            return torch.from_numpy(session.run(["features"], feeds)[0])

        return run
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.jit")
        return torch.jit.load(str(path), map_location="cpu")


@torch.no_grad()
def parity(encoder: CLIPImageEncoder, exported_path: str | Path, batch: int = 6) -> float:
    """Max absolute difference between the exported model's and the eager encoder's features on a fresh batch
    (another size than the trace's example, every scenario and group present)."""
    inputs = example_inputs(encoder, batch=batch, seed=1)
    exported = load_exported(exported_path)(*inputs)
    return float((exported - eager_features(encoder, inputs)).abs().max())


EXPORTERS = {"torchscript": export_torchscript, "program": export_program, "onnx": export_onnx}
SUFFIXES = {"torchscript": ".pt", "program": ".pt2", "onnx": ".onnx"}  # load_exported reads the format from it


def output_format(out: Path, requested: str | None) -> str:
    """The format of ``--out``: from its suffix, which must agree with ``--format`` when both are given."""
    by_suffix = {suffix: fmt for fmt, suffix in SUFFIXES.items()}.get(out.suffix)
    if requested is None:
        if by_suffix is None:
            raise ConfigError(f"--out {out}: cannot tell the format from {out.suffix or 'no suffix'}; name the file "
                              "*.pt (torchscript), *.pt2 (program) or *.onnx")
        return by_suffix
    if by_suffix != requested:
        raise ConfigError(f"--out {out} does not end in {SUFFIXES[requested]}, the suffix of --format {requested}; "
                          f"use --out {out.with_suffix(SUFFIXES[requested])} or drop --format to go by the suffix")
    return requested


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="itkm export",
        description="Export the image encoder: (pixel_values [B,3,H,W] CLIP-normalised, scenario [B], group [B]) -> "
                    "L2-normalised features [B,D]. Writes OUT and OUT.json (input size, normalisation, feature size) "
                    f"and checks that the export matches the checkpoint (max abs diff < {PARITY_TOLERANCE:g}).",
    )
    parser.add_argument("model", help="run directory, Lightning checkpoint (.ckpt) or stage handoff (handoff.pt)")
    parser.add_argument("--out", required=True,
                        help="output file: .pt for torchscript, .pt2 for torch.export (program), .onnx for onnx")
    parser.add_argument("--format", choices=tuple(EXPORTERS), default=None,
                        help="torchscript (torch.jit.trace; loads in C++/libtorch), program (torch.export, its "
                             "successor), onnx (needs onnx + onnxscript); default: from the suffix of --out")
    return parser


def main(argv: list[str]) -> None:
    args = build_parser().parse_args(argv)
    out = Path(args.out).expanduser()
    fmt = output_format(out, args.format)  # before any work: a mismatch writes nothing
    encoder, backbone = load_image_encoder(args.model)
    # Exported and checked under a temporary name: a failed parity check (or a crash in it) leaves no file at --out.
    with atomic_path(out) as staged:
        EXPORTERS[fmt](encoder, staged)
        checked = fmt != "onnx" or importlib.util.find_spec("onnxruntime") is not None
        diff = parity(encoder, staged) if checked else None
        if diff is not None and not diff < PARITY_TOLERANCE:
            raise ExportParityError(f"the exported model differs from the checkpoint by {diff:.2e} (> {PARITY_TOLERANCE:g}); "
                                    f"nothing was written to {out}. Report this with your torch version.")
    atomic_write_json(out.with_name(out.name + ".json"), {
        "format": fmt, "source": str(args.model), "image_size": list(backbone.image_size),
        "mean": list(CLIP_MEAN), "std": list(CLIP_STD), "feature_dim": encoder.feature_dim,
        "inputs": {"pixel_values": "float32 [B,3,H,W], CLIP-normalised RGB",
                   "scenario": "int64 [B]: 0 vi, 1 cr, 2 cc", "group": "int64 [B]: 0 or 1"},
        "output": "float32 [B,D], L2-normalised f", "parity_max_abs_diff": diff,
    })
    check = f"max abs diff vs checkpoint {diff:.1e}" if diff is not None else "not checked (onnxruntime missing)"
    print(f"exported {fmt} -> {out} ({check}); input spec in {out.name}.json")
