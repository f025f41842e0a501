"""Image features for tools: list images, tag them (scenario, group), encode them in batches."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm import tqdm

from itkm_lightning.data.dataset import ReIDImageDataset
from itkm_lightning.data.schema import SCENARIOS, Sample
from itkm_lightning.data.transforms import test_transform
from itkm_lightning.errors import ConfigError, DataFormatError, DataUnavailableError
from itkm_lightning.models.clip_image import CLIPImageEncoder

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")

Encode = Callable[[dict], torch.Tensor]


def list_images(inputs: Sequence[str | Path]) -> list[Path]:
    """Image files named directly or found (recursively, sorted) in the given folders."""
    found: list[Path] = []
    for item in inputs:
        path = Path(item).expanduser()
        if path.is_dir():
            found.extend(sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()))
        elif path.is_file():
            found.append(path)
        else:
            raise DataUnavailableError(f"{path} does not exist; pass image files or folders of images")
    if not found:
        raise DataFormatError(f"no images ({', '.join(IMAGE_SUFFIXES)}) found in {', '.join(map(str, inputs))}")
    return found


def tag_images(paths: Sequence[Path], scenario: str, group: int) -> list[Sample]:
    """Samples for untagged images: one (scenario, group) for all; identities unknown (-1)."""
    if scenario not in SCENARIOS:
        raise ConfigError(f"scenario must be one of {list(SCENARIOS)}, got {scenario!r}")
    if group not in (0, 1):
        raise ConfigError(f"group must be 0 or 1, got {group}")
    return [Sample(path=str(p), pid=-1, camid=-1, scenario=scenario, group=group, source="images") for p in paths]


def samples_from_config(configs: Sequence[str | Path], split: str, benchmark: str | None = None,
                        overrides: Sequence[str] = ()) -> list[Sample]:
    """Tagged samples of the datasets a training config lists (``data.root``, ``data.sources``).

    The config is parsed and checked as ``itkm fit`` does it (same ``--data.root ...`` overrides; a
    ``class_path`` must name a dataset source). ``split``: ``query``, ``gallery``, ``test`` (query + gallery) or
    ``train``; ``benchmark`` picks one by name.
    """
    from itkm_lightning.fit_config import parse_fit_config
    from itkm_lightning.data.names import source_of

    for config in configs:
        if not Path(config).expanduser().is_file():
            raise DataUnavailableError(f"config {config} does not exist")
    data = parse_fit_config([str(Path(c).expanduser()) for c in configs], overrides).get("data")
    if data is None or not data.get("sources"):
        raise ConfigError(f"{', '.join(map(str, configs))}: no data.sources to read images from")
    root = Path(data.get("root") or "data")
    benchmarks = []
    # The test split is what the config evaluates (data.test_sources when set), the train split what it trains on.
    entries = data.get("test_sources") if split != "train" and data.get("test_sources") else data.sources
    for entry in entries:
        benchmarks.extend(source_of(entry).load(root))
    if benchmark is not None:
        names = [b.name for b in benchmarks]
        benchmarks = [b for b in benchmarks if b.name == benchmark]
        if not benchmarks:
            raise ConfigError(f"no benchmark named {benchmark!r}; the config has {names}")
    parts = {"query": ("query",), "gallery": ("gallery",), "test": ("query", "gallery"), "train": ("train",)}
    if split not in parts:
        raise ConfigError(f"split must be one of {list(parts)}, got {split!r}")
    samples = [s for b in benchmarks for part in parts[split] for s in getattr(b, part)]
    if not samples:  # e.g. --split test of own footage without a labels file
        raise ConfigError(f"the config's {split} split holds no images ({', '.join(b.name for b in benchmarks)}); "
                          "try --split train")
    return samples


def encoder_features(encoder: CLIPImageEncoder, feature: str = "f", flip: bool = False) -> Encode:
    """L2-normalised retrieval features of a batch, as the stages compute them (``f`` or ``f+v``)."""
    if feature not in ("f", "f+v"):
        raise ConfigError(f"feature must be 'f' or 'f+v', got {feature!r}")

    def encode(batch: dict) -> torch.Tensor:
        def once(images: torch.Tensor) -> torch.Tensor:
            out = encoder(images, batch["scenario"], batch["group"])
            return out.f if feature == "f" else torch.cat([out.f, out.v], dim=1)

        feats = once(batch["image"])
        if flip:
            feats = feats + once(torch.flip(batch["image"], dims=[3]))
        return F.normalize(feats, dim=1)

    return encode


@torch.no_grad()
def embed_samples(
    encode: Encode,
    samples: Sequence[Sample],
    image_size: tuple[int, int],
    *,
    device: torch.device | str = "cpu",
    batch_size: int = 64,
    num_workers: int = 0,
    view_transform: Callable | None = None,
    progress: bool = True,
) -> torch.Tensor:
    """Features of ``samples`` in their order, (N, D) float32 on CPU; one process, no sharding."""
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    dataset = ReIDImageDataset(samples, test_transform(tuple(image_size)), view_transform=view_transform)
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers, shuffle=False)
    chunks = []
    for batch in tqdm(loader, desc="embedding", unit="batch", disable=not progress, leave=False):
        batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
        chunks.append(encode(batch).float().cpu())
    return torch.cat(chunks)


def progress_enabled() -> bool:
    """Progress bars only on a terminal: in a SLURM log they are thousands of carriage-return lines."""
    import sys

    return sys.stdout.isatty()


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {name}: CUDA is not available here; use --device cpu")
    return device
