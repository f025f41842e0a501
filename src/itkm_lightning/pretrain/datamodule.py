"""Image-caption pairs of the pretraining corpus, held in memory (6,000 pictures are ~150 MB as uint8)."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, RandomSampler
from torchvision.transforms import v2

from itkm_lightning.data.dataset import load_rgb
from itkm_lightning.data.transforms import CLIP_MEAN, CLIP_STD
from itkm_lightning.errors import ConfigError
from itkm_lightning.models.tokenizer import clip_tokenizer
from itkm_lightning.synthetic.corpus import CorpusSpec, ensure_corpus, read_corpus

CONTEXT_LENGTH = 77
"""CLIP's text context; the corpus captions are far shorter (about 25 tokens at most)."""


def load_corpus_images(corpus_dir: Path, records: list[dict], image_size: tuple[int, int]) -> Tensor:
    """(N, 3, H, W) uint8 pictures, low-resolution ones up-sampled exactly as the benchmark's test loader does."""
    resize = v2.Resize(image_size, interpolation=v2.InterpolationMode.BICUBIC, antialias=True)
    pictures = [v2.functional.pil_to_tensor(resize(load_rgb(str(corpus_dir / r["path"])))) for r in records]
    return torch.stack(pictures)


def tokenize_captions(records: list[dict]) -> Tensor:
    """(N, K, L) token ids of the K captions of every picture, padded with <|endoftext|> to the longest."""
    captions = [caption for record in records for caption in record["captions"]]
    unique = sorted(set(captions))  # short captions repeat a lot: tokenize each text once
    tokenizer = clip_tokenizer()
    ids = tokenizer(unique, padding="longest", truncation=True, max_length=CONTEXT_LENGTH, return_tensors="pt")
    row_of = {caption: row for row, caption in enumerate(unique)}
    rows = torch.tensor([row_of[caption] for caption in captions])
    per_image = len(records[0]["captions"]) if records else 0
    return ids["input_ids"][rows].reshape(len(records), per_image, -1)


class CaptionedImages(Dataset):
    """Items: the uint8 ``image`` and the token ids of one of its captions, drawn at random each time."""

    def __init__(self, images: Tensor, captions: Tensor) -> None:
        if images.shape[0] != captions.shape[0]:
            raise ValueError(f"{images.shape[0]} images but {captions.shape[0]} caption sets")
        self.images = images
        self.captions = captions

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        choice = int(torch.randint(self.captions.shape[1], ()))
        return {"image": self.images[index], "input_ids": self.captions[index, choice]}


def augment_batch(images: Tensor, flip: float, padding: int) -> Tensor:
    """uint8 (B, 3, H, W) -> augmented, CLIP-normalised float images.

    Flip and small shifts only: colour augmentation would make the captions' colour words false.
    Done on the whole batch at once (about 10x cheaper than torchvision transforms per picture on CPU).
    """
    batch, _, height, width = images.shape
    pictures = images.float().div(255.0)
    if flip > 0:
        flipped = torch.rand(batch, device=images.device) < flip
        pictures = torch.where(flipped[:, None, None, None], pictures.flip(3), pictures)
    if padding > 0:  # pad by edge replication, then crop each picture at its own random offset
        padded = F.pad(pictures, (padding, padding, padding, padding), mode="replicate")
        top = torch.randint(0, 2 * padding + 1, (batch,), device=images.device)
        left = torch.randint(0, 2 * padding + 1, (batch,), device=images.device)
        rows = top[:, None] + torch.arange(height, device=images.device)
        cols = left[:, None] + torch.arange(width, device=images.device)
        index = torch.arange(batch, device=images.device)[:, None, None]
        pictures = padded[index, :, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)
    mean = torch.tensor(CLIP_MEAN, device=images.device)[:, None, None]
    std = torch.tensor(CLIP_STD, device=images.device)[:, None, None]
    return (pictures - mean) / std


class CorpusDataModule(L.LightningDataModule):
    """The captioned corpus, rendered on first use, as shuffled batches of (image, caption).

    Args:
        corpus: what to render (people, outfits, pictures per condition, captions per picture).
        root: folder holding rendered corpora (``<root>/<name>/``).
        image_size: network input (H, W); must equal ``model.backbone.image_size``.
        batch_size: image-caption pairs per step (the contrastive loss compares every pair of a batch).
        flip: horizontal-flip probability.
        padding: random shift range in pixels (pad by edge replication, then crop).
        num_workers: data-loading worker processes (0: the pictures are already in memory).
        seed: seed of the shuffling order.
        progress: show a progress bar while rendering.
    """

    def __init__(
        self,
        corpus: CorpusSpec = CorpusSpec(),
        root: str = "data/pretrain_corpus",
        image_size: tuple[int, int] = (128, 64),
        batch_size: int = 64,
        flip: float = 0.5,
        padding: int = 6,
        num_workers: int = 0,
        seed: int = 0,
        progress: bool = True,
    ) -> None:
        super().__init__()
        if batch_size < 2:
            raise ConfigError(f"data.batch_size must be >= 2 for a contrastive loss; got {batch_size}")
        if batch_size > corpus.num_images:
            raise ConfigError(f"data.batch_size {batch_size} exceeds the corpus size {corpus.num_images}; lower it.")
        if num_workers < 0:
            raise ConfigError(f"data.num_workers must be >= 0; got {num_workers}")
        self.corpus = corpus
        self.root = Path(root)
        self.image_size = tuple(image_size)
        self.batch_size = batch_size
        self.flip = flip
        self.padding = padding
        self.num_workers = num_workers
        self.seed = seed
        self.progress = progress
        self.dataset: CaptionedImages | None = None

    @property
    def corpus_dir(self) -> Path:
        return ensure_corpus(self.root, self.corpus, progress=self.progress)

    def prepare_data(self) -> None:
        ensure_corpus(self.root, self.corpus, progress=self.progress)

    def setup(self, stage: str | None = None) -> None:
        if self.dataset is not None:
            return
        corpus_dir = self.corpus_dir
        records = read_corpus(corpus_dir)
        images = load_corpus_images(corpus_dir, records, self.image_size)
        self.dataset = CaptionedImages(images, tokenize_captions(records))

    def train_dataloader(self) -> DataLoader:
        if self.dataset is None:
            raise RuntimeError("call setup() before train_dataloader()")
        sampler = RandomSampler(self.dataset, generator=torch.Generator().manual_seed(self.seed))
        return DataLoader(self.dataset, batch_size=self.batch_size, sampler=sampler, drop_last=True,
                          num_workers=self.num_workers, persistent_workers=self.num_workers > 0)

    def on_after_batch_transfer(self, batch: dict[str, Tensor], dataloader_idx: int) -> dict[str, Tensor]:
        return {**batch, "image": augment_batch(batch["image"], self.flip, self.padding)}
