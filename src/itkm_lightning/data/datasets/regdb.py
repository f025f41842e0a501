"""RegDB (docs/protocols.md sections 2.2, 5.4): one visible and one thermal camera, 10 train/test trials.

Groups: 0 = visible, 1 = infrared (thermal).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from itkm_lightning.data.datasets.common import (
    FolderSource,
    chosen_subset,
    first_with_train,
    missing_layout_error,
    read_labelled_list,
    require_dir,
    require_file,
)
from itkm_lightning.data.schema import BenchmarkSplit, Sample
from itkm_lightning.errors import ConfigError, DataFormatError

SCENARIO = "vi"
VISIBLE, INFRARED = 0, 1

REGDB_CAMERAS = {"visible": 1, "thermal": 2}
"""RegDB has one camera per modality; docs/protocols.md 2.2 numbers them 1 (visible) and 2 (thermal)."""
REGDB_TREE = """RegDB/
  Visible/<id>/*.bmp
  Thermal/<id>/*.bmp
  idx/train_visible_<t>.txt, train_thermal_<t>.txt   t = 1..10; lines '<relative path> <label>'
  idx/test_visible_<t>.txt,  test_thermal_<t>.txt"""


class RegDB(FolderSource):
    """RegDB, one of its 10 trials: benchmarks ``regdb_v2t`` (visible -> thermal) and ``regdb_t2v``.

    Training and test sets come from the trial's ``idx`` lists; the pid is the list label. Multi-shot
    galleries, no removal (``protocol="regdb"``). The published protocol trains and tests one model per
    trial and averages the 10 results: run once per ``trial``.

    Args:
        path: the RegDB folder, absolute or relative to ``data.root`` (default ``<root>/RegDB``).
        trial: which train/test lists to use, 1..10.
        directions: directions to report: ``v2t`` -> ``regdb_v2t``, ``t2v`` -> ``regdb_t2v``.
    """

    source = "regdb"
    scenario = SCENARIO
    default_folder = "RegDB"

    def __init__(
        self,
        path: str | None = None,
        trial: int = 1,
        directions: list[Literal["v2t", "t2v"]] | None = None,
    ) -> None:
        if not 1 <= trial <= 10:
            raise ConfigError(f"RegDB trial must be 1..10 (idx/*_<trial>.txt); got {trial}")
        directions = chosen_subset(directions, ("v2t", "t2v"), "RegDB directions")
        self.path = path
        self.trial = trial
        self.directions = directions

    def load(self, root: Path) -> list[BenchmarkSplit]:
        dataset_dir = require_dir(self.dataset_dir(root), "RegDB", REGDB_TREE)
        train = self._list_samples(dataset_dir, "train", "visible") + self._list_samples(dataset_dir, "train", "thermal")
        test = {modality: self._list_samples(dataset_dir, "test", modality) for modality in REGDB_CAMERAS}
        roles = {"v2t": ("visible", "thermal"), "t2v": ("thermal", "visible")}
        splits = [
            BenchmarkSplit(name=f"regdb_{d}", scenario=SCENARIO, protocol="regdb",
                           query=list(test[roles[d][0]]), gallery=list(test[roles[d][1]]))
            for d in self.directions
        ]
        return first_with_train(splits, train)

    def _list_samples(self, dataset_dir: Path, split: str, modality: str) -> list[Sample]:
        """Samples of one ``idx/<split>_<modality>_<trial>.txt`` list, in list order."""
        list_file = require_file(dataset_dir / "idx" / f"{split}_{modality}_{self.trial}.txt", "RegDB", REGDB_TREE)
        entries = read_labelled_list(list_file)
        if not entries:
            raise DataFormatError(f"RegDB: {list_file} lists no images; re-extract the official idx files")
        group = VISIBLE if modality == "visible" else INFRARED
        samples = []
        for relative, label in entries:
            path = dataset_dir / relative
            if not path.is_file():
                missing_layout_error("RegDB", path, REGDB_TREE)
            samples.append(Sample(path=str(path), pid=label, camid=REGDB_CAMERAS[modality], scenario=SCENARIO,
                                  group=group, source=self.source))
        return samples
