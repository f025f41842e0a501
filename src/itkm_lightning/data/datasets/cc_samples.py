"""Samples of a clothing-change dataset folder (docs/protocols.md section 4): tags, clothes keys, masks.

Every image is group 0 of scenario ``cc``; the datamodule adds the clothing-agnostic group-1 view of
each training image itself. When a dataset folder holds ``masks/`` mirroring its image tree
(``masks/<relative path>.png``, a human-parsing label map such as SCHP-LIP output), each sample's
``mask_path`` points to its mask; read them with ``ClothesMasker(mask_format="parsing")``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

from itkm_lightning.data.datasets.common import list_images, no_images_error, require_dir
from itkm_lightning.data.schema import Sample
from itkm_lightning.errors import DataFormatError

SCENARIO = "cc"
ORIGINAL = 0
MASKS_FOLDER = "masks"

Labels = tuple[int, int, str | None]
"""(pid, camera, clothes key) parsed from one file."""


def mask_path_for(image: Path, dataset_dir: Path) -> str | None:
    """``<dataset>/masks/<relative image path with .png suffix>`` when that file exists, else None."""
    mask = dataset_dir / MASKS_FOLDER / image.relative_to(dataset_dir).with_suffix(".png")
    return str(mask) if mask.is_file() else None


class SampleBuilder:
    """Makes the samples of one dataset folder: source name, masks and ``cc`` tags in one place."""

    def __init__(self, name: str, source: str, dataset_dir: Path, tree: str) -> None:
        self.name = name
        self.source = source
        self.dataset_dir = dataset_dir
        self.tree = tree
        self.has_masks = (dataset_dir / MASKS_FOLDER).is_dir()

    def sample(self, path: Path, pid: int, camid: int, clothes: str | None) -> Sample:
        mask = mask_path_for(path, self.dataset_dir) if self.has_masks else None
        return Sample(path=str(path), pid=pid, camid=camid, scenario=SCENARIO, group=ORIGINAL,
                      source=self.source, clothes=clothes, mask_path=mask)

    def folder(self, relative: str) -> Path:
        return require_dir(self.dataset_dir / relative, self.name, self.tree)

    def flat_folder(self, relative: str, parse: Callable[[str, Path], Labels | None]) -> list[Sample]:
        """Samples of the images directly in ``<dataset>/<relative>``, sorted; ``parse`` None = junk, dropped."""
        folder = self.folder(relative)
        images = list_images(folder, root=self.dataset_dir, recursive=False)
        if not images:
            no_images_error(self.name, folder)
        samples = []
        for path in images:
            labels = parse(path.name, path)
            if labels is not None:
                samples.append(self.sample(path, *labels))
        return samples

    def flat_splits(self, pattern: str, make: Callable[[tuple[str, ...]], Labels],
                    folders: tuple[str, str, str]) -> tuple[list[Sample], list[Sample], list[Sample]]:
        """Train, query and gallery samples of three flat folders whose file names follow ``pattern``."""
        self.folder("")
        parse = regex_parser(self.name, pattern, make)
        train, query, gallery = (self.flat_folder(f, parse) for f in folders)
        return train, query, gallery


def regex_parser(name: str, pattern: str, make: Callable[[tuple[str, ...]], Labels]) -> Callable[[str, Path], Labels | None]:
    """Parse a file name with ``pattern`` (matched at its start); pid -1 marks junk."""
    compiled = re.compile(pattern)

    def parse(file_name: str, path: Path) -> Labels | None:
        match = compiled.match(file_name)
        if match is None:
            raise DataFormatError(f"{name}: file name {file_name!r} does not follow the official pattern "
                                  f"{pattern!r} ({path}); remove files that are not part of the dataset")
        labels = make(match.groups())
        return None if labels[0] == -1 else labels

    return parse
