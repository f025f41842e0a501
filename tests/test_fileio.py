"""fileio: the one atomic-write helper every writer uses (a killed writer never leaves half a file under its name)."""

from __future__ import annotations

import numpy as np
import pytest

from itkm_lightning.fileio import atomic_path, atomic_write


def test_atomic_path_keeps_the_suffix_and_renames_on_success(tmp_path):
    target = tmp_path / "sub" / "model.pt2"
    with atomic_path(target) as tmp:
        assert tmp.parent == target.parent and tmp.suffix == ".pt2" and tmp != target  # writers pick formats by it
        tmp.write_bytes(b"new")
        assert not target.exists()
    assert target.read_bytes() == b"new"
    assert sorted(p.name for p in target.parent.iterdir()) == ["model.pt2"]


def test_atomic_path_keeps_the_old_file_when_the_writer_dies(tmp_path):
    target = tmp_path / "faiss.index"
    target.write_bytes(b"old")
    with pytest.raises(KeyboardInterrupt):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise KeyboardInterrupt
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["faiss.index"]  # no temporary file left behind


def test_atomic_write_without_fsync_writes_the_same_bytes(tmp_path):
    array = np.arange(12, dtype=np.float32).reshape(3, 4)
    atomic_write(tmp_path / "a.npy", lambda handle: np.save(handle, array))
    atomic_write(tmp_path / "b.npy", lambda handle: np.save(handle, array), fsync=False)
    np.save(tmp_path / "c.npy", array)
    assert (tmp_path / "a.npy").read_bytes() == (tmp_path / "b.npy").read_bytes() == (tmp_path / "c.npy").read_bytes()
