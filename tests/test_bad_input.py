"""Bad input ends with one clear line naming the fix, never a traceback."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from itkm_lightning.command import main
from itkm_lightning.errors import error_line
from itkm_lightning.data.dataset import UnreadableImageError, load_rgb

REPO = Path(__file__).resolve().parents[1]


def test_corrupt_and_empty_images_name_the_file(tmp_path):
    truncated = tmp_path / "truncated.png"
    Image.new("RGB", (32, 64), (200, 10, 10)).save(truncated)
    truncated.write_bytes(truncated.read_bytes()[:40])
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    for path in (truncated, empty):
        with pytest.raises(UnreadableImageError, match=path.name):
            load_rgb(str(path))


@pytest.mark.parametrize("mode", ["L", "RGBA", "I;16", "P"])
def test_other_image_modes_become_rgb(tmp_path, mode):
    path = tmp_path / f"img_{mode.replace(';', '')}.png"
    if mode == "I;16":
        Image.fromarray((np.arange(64 * 32).reshape(64, 32) * 30).astype(np.uint16)).save(path)
    else:
        Image.new("RGB", (32, 64), (10, 120, 250)).convert(mode).save(path)
    img = load_rgb(str(path))
    assert img.mode == "RGB" and img.size == (32, 64)
    if mode == "I;16":
        arr = np.asarray(img)
        assert arr.min() == 0 and arr.max() == 255  # rescaled, not clipped to white


def test_worker_wrapped_errors_show_the_original_message():
    wrapped = UnreadableImageError(
        "Caught UnreadableImageError in DataLoader worker process 0.\nOriginal Traceback (most recent call last):\n"
        '  File "x.py", line 1\nitkm_lightning.data.dataset.UnreadableImageError: cannot read image /d/a.png (bad); '
        "replace or delete the file and run again"
    )
    assert error_line(wrapped).startswith("cannot read image /d/a.png")


def test_unavailable_pretrained_backbone_is_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(REPO / "conf/smoke.yaml"), "--model.backbone.pretrained", "true",
              "--model.backbone.vision", "{}", "--model.backbone.text", "{}",
              "--model.backbone.name_or_path", str(tmp_path / "no-such-clip"), "--run_dir", str(tmp_path / "run")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert "no-such-clip" in err.splitlines()[0] and "itkm: error:" in err
