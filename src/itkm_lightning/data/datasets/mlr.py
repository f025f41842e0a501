"""The MLR sets written by ``itkm prepare mlr`` (recipe ``mlr-v1``, docs/protocols.md sections 5.7, 6).

MLR-Market1501, MLR-CUHK03 and MLR-VIPeR: low-resolution queries against a high-resolution gallery
(scenario ``cr``), scored Market-style; groups are read from ``manifest.csv`` (``mlr_format.py``).
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from itkm_lightning.data.datasets.common import log_unmatched_queries, resolve_dataset_dir
from itkm_lightning.data.datasets.mlr_format import MLR_FOLDERS, MLR_OUTPUT_DIRS, read_mlr_folder
from itkm_lightning.data.schema import BenchmarkSplit, Sample
from itkm_lightning.data.sources import DatasetSource
from itkm_lightning.errors import DataFormatError
from itkm_lightning.evaluation import SINGLE_GALLERY_SHOT_DRAWS

SCENARIO = "cr"
HIGH_RES, LOW_RES = 0, 1
PROTOCOL = "market"


class _MLRSource(DatasetSource):
    """An MLR set written by ``itkm prepare mlr`` (recipe mlr-v1): LR queries vs HR gallery, Market-style.

    With ``single_gallery_shot`` a second benchmark ``<name>_sgs`` scores the same query and gallery with the
    literature's protocol (docs/protocols.md 5.7): CMC averaged over 10 seeded one-HR-image-per-identity
    galleries, mAP on the full gallery; its results.json entry says ``"protocol": "single_gallery_shot"``.
    """

    source_key: ClassVar[str]
    name: ClassVar[str]

    def __init__(self, path: str | None = None, single_gallery_shot: bool = False) -> None:
        """
        Args:
            path: the set's folder (``MLR-Market1501``, ``MLR-CUHK03`` or ``MLR-VIPeR``), absolute or relative
                to ``data.root``; default ``<root>/<that folder>``.
            single_gallery_shot: also score ``<benchmark>_sgs`` with the literature's protocol (docs/protocols.md 5.7).
        """
        self.path = path
        self.single_gallery_shot = single_gallery_shot

    @property
    def folder(self) -> str:
        return MLR_OUTPUT_DIRS[self.source_key]

    def load(self, root: Path) -> list[BenchmarkSplit]:
        dataset_dir = resolve_dataset_dir(root, self.path, self.folder).resolve()
        rows = read_mlr_folder(dataset_dir, self.name, self.source_key)
        bench = BenchmarkSplit(name=self.name, scenario=SCENARIO, protocol=PROTOCOL)
        target = dict(zip(MLR_FOLDERS, (bench.train, bench.query, bench.gallery)))
        for row in rows:
            if row.folder not in target or row.group not in (HIGH_RES, LOW_RES):
                raise DataFormatError(f"{self.name}: manifest row {row.folder}/{row.file} has an unknown folder or group")
            target[row.folder].append(Sample(
                path=str(dataset_dir / row.folder / row.file), pid=row.pid, camid=row.cam, scenario=SCENARIO,
                group=row.group, source=self.name,
            ))
        for samples in target.values():
            samples.sort(key=lambda s: s.path)
        if not bench.query or not bench.gallery:
            raise DataFormatError(f"{self.name}: {dataset_dir} has no query or no gallery images; rebuild it.")
        log_unmatched_queries(bench)
        if not self.single_gallery_shot:
            return [bench]
        literature = BenchmarkSplit(name=f"{self.name}_sgs", scenario=SCENARIO, protocol=PROTOCOL,
                                    query=list(bench.query), gallery=list(bench.gallery),
                                    single_gallery_shot=SINGLE_GALLERY_SHOT_DRAWS)
        return [bench, literature]


class MLRMarket1501(_MLRSource):
    """MLR-Market1501 (mlr-v1): LR queries of cameras 4-6 vs the HR gallery of cameras 1-3 with distractors.

    Benchmark ``mlr_market1501``. Build it with ``itkm prepare mlr --source market1501``.
    """

    source_key = "market1501"
    name = "mlr_market1501"


class MLRCUHK03(_MLRSource):
    """MLR-CUHK03 (mlr-v1): LR second-camera queries vs HR first-camera gallery of a classic split's 100 test ids.

    Benchmark ``mlr_cuhk03``. Build it with ``itkm prepare mlr --source cuhk03``.
    """

    source_key = "cuhk03"
    name = "mlr_cuhk03"


class MLRVIPeR(_MLRSource):
    """MLR-VIPeR (mlr-v1): LR ``cam_b`` queries vs HR ``cam_a`` gallery of 316 test ids.

    Benchmark ``mlr_viper``. Build it with ``itkm prepare mlr --source viper``.
    """

    source_key = "viper"
    name = "mlr_viper"
