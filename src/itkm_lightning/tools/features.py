"""Image features for tools: list images, tag them (scenario, group), encode them in batches."""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm import tqdm

from itkm_lightning.data.dataset import ReIDImageDataset
from itkm_lightning.data.schema import SCENARIOS, Sample
from itkm_lightning.data.transforms import test_transform
from itkm_lightning.models.clip import CLIPImageEncoder

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
FEATURES_FILE = "features.npy"
INDEX_FILE = "index.csv"  # one row per feature row: path, scenario, group

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
            raise FileNotFoundError(f"{path} does not exist; pass image files or folders of images")
    if not found:
        raise ValueError(f"no images ({', '.join(IMAGE_SUFFIXES)}) found in {', '.join(map(str, inputs))}")
    return found


def tag_images(paths: Sequence[Path], scenario: str, group: int) -> list[Sample]:
    """Samples for untagged images: one (scenario, group) for all; identities unknown (-1)."""
    if scenario not in SCENARIOS:
        raise ValueError(f"scenario must be one of {list(SCENARIOS)}, got {scenario!r}")
    if group not in (0, 1):
        raise ValueError(f"group must be 0 or 1, got {group}")
    return [Sample(path=str(p), pid=-1, camid=-1, scenario=scenario, group=group, source="images") for p in paths]


def samples_from_config(configs: Sequence[str | Path], split: str, benchmark: str | None = None,
                        overrides: Sequence[str] = ()) -> list[Sample]:
    """Tagged samples of the datasets a training config lists (``data.root``, ``data.sources``).

    The config is parsed and checked as ``itkm fit`` does it (same ``--data.root ...`` overrides; a
    ``class_path`` must name a dataset source). ``split``: ``query``, ``gallery``, ``test`` (query + gallery) or
    ``train``; ``benchmark`` picks one by name.
    """
    from itkm_lightning.cli import parse_fit_config
    from itkm_lightning.config_files import source_class

    for config in configs:
        if not Path(config).expanduser().is_file():
            raise FileNotFoundError(f"config {config} does not exist")
    data = parse_fit_config([str(Path(c).expanduser()) for c in configs], overrides).get("data")
    if data is None or not data.get("sources"):
        raise ValueError(f"{', '.join(map(str, configs))}: no data.sources to read images from")
    root = Path(data.get("root") or "data")
    benchmarks = []
    for entry in data.sources:
        init = entry.get("init_args")
        source = source_class(entry.class_path)(**(init.as_dict() if hasattr(init, "as_dict") else init or {}))
        benchmarks.extend(source.load(root))
    if benchmark is not None:
        names = [b.name for b in benchmarks]
        benchmarks = [b for b in benchmarks if b.name == benchmark]
        if not benchmarks:
            raise ValueError(f"no benchmark named {benchmark!r}; the config has {names}")
    parts = {"query": ("query",), "gallery": ("gallery",), "test": ("query", "gallery"), "train": ("train",)}
    if split not in parts:
        raise ValueError(f"split must be one of {list(parts)}, got {split!r}")
    return [s for b in benchmarks for part in parts[split] for s in getattr(b, part)]


def encoder_features(encoder: CLIPImageEncoder, feature: str = "f", flip: bool = False) -> Encode:
    """L2-normalised retrieval features of a batch, as the stages compute them (``f`` or ``f+v``)."""
    if feature not in ("f", "f+v"):
        raise ValueError(f"feature must be 'f' or 'f+v', got {feature!r}")

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
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    dataset = ReIDImageDataset(samples, test_transform(tuple(image_size)), view_transform=view_transform)
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers, shuffle=False)
    chunks = []
    for batch in tqdm(loader, desc="embedding", unit="batch", disable=not progress, leave=False):
        batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
        chunks.append(encode(batch).float().cpu())
    return torch.cat(chunks)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: CUDA is not available here; use --device cpu")
    return device


# ---------------------------------------------------------------- the embedding folder format
def save_embeddings(out_dir: str | Path, features: np.ndarray, samples: Sequence[Sample]) -> Path:
    """``features.npy`` (N, D) float32 and ``index.csv`` (path, scenario, group per row), written atomically."""
    from itkm_lightning.fileio import atomic_write_text

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / f".{FEATURES_FILE}.tmp.npy"
    np.save(tmp, np.ascontiguousarray(features, dtype=np.float32))
    tmp.replace(out_dir / FEATURES_FILE)
    table = io.StringIO()
    writer = csv.writer(table, lineterminator="\n")
    writer.writerow(["path", "scenario", "group"])
    writer.writerows([s.path, s.scenario, s.group] for s in samples)
    atomic_write_text(out_dir / INDEX_FILE, table.getvalue())
    return out_dir


def is_embedding_dir(path: str | Path) -> bool:
    path = Path(path)
    return (path / FEATURES_FILE).is_file() and (path / INDEX_FILE).is_file()


def load_embeddings(folder: str | Path) -> tuple[np.ndarray, list[dict[str, str]]]:
    """What ``save_embeddings`` wrote: features and the index rows (dicts with path, scenario, group)."""
    folder = Path(folder)
    if not is_embedding_dir(folder):
        raise FileNotFoundError(f"{folder} has no {FEATURES_FILE} + {INDEX_FILE}; create it with `itkm embed`")
    try:
        features = np.load(folder / FEATURES_FILE, allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:  # truncated, or not a plain array
        raise ValueError(f"{folder / FEATURES_FILE} cannot be read ({str(err).strip().splitlines()[0]}); "
                         f"embed the folder again with `itkm embed`") from None
    with (folder / INDEX_FILE).open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    if features.ndim != 2 or len(rows) != len(features):
        raise ValueError(f"{folder}: {FEATURES_FILE} has shape {features.shape} but {INDEX_FILE} has {len(rows)} "
                         "rows; embed the folder again")
    return features.astype(np.float32, copy=False), rows
