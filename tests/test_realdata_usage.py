"""Real images: train briefly on CUHK01 from ../shared/realdata, then `itkm embed` and `itkm search` them.

Skipped with a message where the folder is absent (set ITKM_REALDATA to point elsewhere); nothing is copied.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from itkm_lightning.command import main

REPO = Path(__file__).resolve().parents[1]


def cuhk01_or_skip() -> Path:
    configured = os.environ.get("ITKM_REALDATA")
    realdata = Path(configured) if configured else REPO.parent / "shared" / "realdata"
    folder = realdata / "cuhk01_manideep2510"
    if not (folder / "labels.csv").is_file():
        pytest.skip(f"real images not found at {folder} (set ITKM_REALDATA to the realdata folder to run this)")
    return folder


def pid_of(path: str) -> int:
    return int(Path(path).name[:4])  # CUHK01 names: NNNNKKK.png, NNNN = identity


@pytest.mark.slow
def test_train_then_embed_and_search_real_cuhk01(tmp_path, capsys):
    folder = cuhk01_or_skip()
    data = tmp_path / "cuhk01.yaml"
    data.write_text(
        "data:\n"
        f"  root: {json.dumps(str(folder))}\n"
        "  sources:\n"
        "    - class_path: itkm_lightning.data.datasets.cuhk01.CUHK01\n"
        "      init_args: {scenario: cr, split: 0}\n"
    )
    run_dir = tmp_path / "run"
    main(["fit", "--config", str(REPO / "conf" / "smoke.yaml"), "--config", str(data), "--run_dir", str(run_dir),
          "--trainer.enable_progress_bar", "false"])
    evaluated = json.loads((run_dir / "results.json").read_text())["stage3"]["cuhk01"]  # the run dir serves its last stage
    assert (run_dir / "figures" / "ranked_cuhk01.png").is_file()

    for split in ("query", "gallery"):  # tags (scenario cr; camera B = group 1, A = group 0) come from the loader
        main(["embed", "--config", str(data), "--split", split, "--model", str(run_dir),
              "--out", str(tmp_path / split)])
    capsys.readouterr()
    main(["search", str(tmp_path / "query"), "--gallery", str(tmp_path / "gallery"), "--topk", "10",
          "--format", "json", "--out", str(tmp_path / "search")])
    results = json.loads(capsys.readouterr().out)
    gallery = {line.split(",")[0] for line in (tmp_path / "gallery" / "index.csv").read_text().splitlines()[1:]}
    assert len(results) == 100 and len(gallery) == 100  # 50 test identities x 2 images per camera
    for entry in results:
        scores = [m["score"] for m in entry["matches"]]
        assert len(scores) == 10 and scores == sorted(scores, reverse=True) and scores[0] <= 1.0 + 1e-5
        assert {m["path"] for m in entry["matches"]} <= gallery
    top1 = sum(pid_of(r["query"]) == pid_of(r["matches"][0]["path"]) for r in results) / len(results)
    top10 = sum(any(pid_of(r["query"]) == pid_of(m["path"]) for m in r["matches"]) for r in results) / len(results)
    # Queries (camera B) and gallery (camera A) share no camera, so the Market-style protocol removes nothing:
    # search's hit rates are the evaluation's R1 and R10, up to near-ties between two feature extractions.
    assert top1 == pytest.approx(evaluated["R1"], abs=0.021)
    assert top10 == pytest.approx(evaluated["R10"], abs=0.021)
    print(f"\nCUHK01 search: top-1 same identity {top1:.2f} (evaluation R1 {evaluated['R1']:.2f}), "
          f"top-10 {top10:.2f} (R10 {evaluated['R10']:.2f}); first query {Path(results[0]['query']).name} -> "
          + ", ".join(f"{Path(m['path']).name} ({m['score']:.3f})" for m in results[0]["matches"][:5]))
