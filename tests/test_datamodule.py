import numpy as np
import pytest
import torch

from itkm_lightning.data.datamodule import ReIDDataModule
from itkm_lightning.data.sources import SyntheticBenchmark

GROUND_TRUTH_KEYS = {"pid", "camid", "clothes", "identity", "path", "source"}


@pytest.fixture()
def datamodule(synthetic_root):
    dm = ReIDDataModule(sources=[SyntheticBenchmark(preset="tiny", seed=0)], root=str(synthetic_root),
                        image_size=(64, 32), num_clusters_per_batch=2, num_instances=2, iters_per_epoch=2,
                        test_batch_size=16, num_workers=0)
    dm.prepare_data()
    dm.setup("fit")
    return dm


def test_merges_scenarios_into_six_blocks_with_namespaced_ids(datamodule):
    assert datamodule.blocks == [("vi", 0), ("vi", 1), ("cr", 0), ("cr", 1), ("cc", 0), ("cc", 1)]
    identities = {s.identity for s in datamodule.train_samples}
    sources = {i.split(":")[0] for i in identities}
    assert sources == {"synthetic_vi", "synthetic_cr", "synthetic_cc"}
    # every cc training image also appears as its clothing-agnostic view (group 1)
    cc = [s for s in datamodule.train_samples if s.scenario == "cc"]
    assert sum(s.group == 0 for s in cc) == sum(s.group == 1 for s in cc) > 0


def test_training_batches_carry_no_ground_truth(datamodule):
    labels = np.arange(len(datamodule.train_samples)) // 2  # any pseudo-labels
    datamodule.set_pseudo_labels(labels)
    batch = next(iter(datamodule.train_dataloader()))
    assert set(batch) == {"image", "index", "scenario", "group", "pseudo_label"}
    assert not GROUND_TRUTH_KEYS & set(batch)
    assert batch["image"].shape[1:] == (3, 64, 32)
    assert (batch["pseudo_label"] == labels[batch["index"].numpy()]).all()


def test_clothing_agnostic_view_removes_colour_on_clothes(datamodule):
    from PIL import Image

    from itkm_lightning.data.dataset import load_rgb

    view_sample = next(s for s in datamodule.train_samples if s.scenario == "cc" and s.group == 1)
    original = np.asarray(load_rgb(view_sample.path), dtype=np.int16)
    view = np.asarray(datamodule._clothing_agnostic_view(view_sample, load_rgb(view_sample.path)), dtype=np.int16)
    mask = np.asarray(Image.open(view_sample.mask_path).convert("L")) > 127
    assert mask.any()
    assert (view[mask].max(axis=1) - view[mask].min(axis=1)).max() <= 2  # grey: no colour left
    assert (view[~mask] == original[~mask]).all()


def test_validation_loaders_cover_query_and_gallery(datamodule):
    loaders = datamodule.val_dataloader()
    assert len(loaders) == len(datamodule.benchmarks) == 3
    for loader, bench in zip(loaders, datamodule.benchmarks):
        assert len(loader.dataset) == len(bench.query) + len(bench.gallery)
        assert "pid" not in next(iter(loader))


def test_bad_values_are_rejected_with_the_key():
    with pytest.raises(ValueError, match="num_instances"):
        ReIDDataModule(sources=[SyntheticBenchmark(preset="tiny")], num_instances=0)
    with pytest.raises(ValueError, match="sources"):
        ReIDDataModule(sources=[])
    with pytest.raises(ValueError, match="highres_downsample"):
        ReIDDataModule(sources=[SyntheticBenchmark(preset="tiny")], highres_downsample=1.5)


def test_multi_trial_benchmarks_average_over_trials():
    import torch

    from itkm_lightning.data.schema import BenchmarkSplit, Sample
    from itkm_lightning.evaluation.benchmark import evaluate_benchmark

    def s(pid, cam):
        return Sample(path="x", pid=pid, camid=cam, scenario="vi", group=0, source="t")

    query = [s(1, 3), s(2, 3)]
    gallery = [s(1, 1), s(2, 1), s(1, 2), s(2, 2)]
    # query 1 matches gallery 0 exactly and gallery 2 badly; query 2 the other way round
    feats = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.6, 0.8], [0.0, 1.0], [0.8, 0.6]])
    feats = torch.nn.functional.normalize(feats, dim=1)
    one = BenchmarkSplit("t", "vi", "market", query=query, gallery=gallery, trials=[(None, [0, 1])])
    two = BenchmarkSplit("t", "vi", "market", query=query, gallery=gallery, trials=[(None, [0, 1]), (None, [2, 3])])
    assert evaluate_benchmark(one, feats)["R1"] == 1.0
    # trial 2: gallery (1,cam2)=[0.6,0.8], (2,cam2)=[0.8,0.6]: both queries rank the wrong id first
    assert evaluate_benchmark(two, feats)["R1"] == 0.5


def test_resolution_augmentation_blurs_only_when_drawn():
    from PIL import Image

    from itkm_lightning.data.transforms import RandomDownUp

    stripes = np.zeros((64, 32, 3), dtype=np.uint8)
    stripes[::2] = 255  # one-pixel stripes: the finest detail an image can hold
    image = Image.fromarray(stripes)
    assert RandomDownUp(p=0.0)(image) is image
    torch.manual_seed(0)
    degraded = np.asarray(RandomDownUp(p=1.0)(image), dtype=np.float64)
    assert degraded.shape == stripes.shape
    # a 2-4x shrink cannot keep one-pixel stripes: they average towards grey
    assert degraded.std() < 0.25 * stripes.std()


def high_frequency_share(image) -> float:
    """The share of an image's (mean-free) spectral energy above a quarter cycle per pixel, in either axis:
    what a 2x or stronger shrink removes."""
    spectrum = torch.fft.fft2(image - image.mean(dim=(-2, -1), keepdim=True)).abs() ** 2
    fy = torch.fft.fftfreq(image.shape[-2]).abs()[:, None]
    fx = torch.fft.fftfreq(image.shape[-1]).abs()[None, :]
    return float(spectrum[..., (fy > 0.25) | (fx > 0.25)].sum() / spectrum.sum())


def test_resolution_augmentation_degrades_high_resolution_cr_images_only(synthetic_root):
    """With data.highres_downsample 1 every high-resolution cr training image loses its fine detail; low-res cr
    images and the other scenarios come out exactly as without it (docs/design.md, "Resolution augmentation")."""
    def training_set(highres_downsample: float):
        # flip, padding and erasing off: the resolution augmentation is the only random step left
        dm = ReIDDataModule(sources=[SyntheticBenchmark(preset="tiny", seed=0)], root=str(synthetic_root),
                            image_size=(64, 32), num_clusters_per_batch=2, num_instances=2, iters_per_epoch=2,
                            test_batch_size=16, num_workers=0, flip=0.0, padding=0, erasing=0.0,
                            highres_downsample=highres_downsample)
        dm.prepare_data()
        dm.setup("fit")
        dm.set_pseudo_labels(np.arange(len(dm.train_samples)) // 2)
        return dm.train_dataloader().dataset

    plain, augmented = training_set(0.0), training_set(1.0)
    torch.manual_seed(0)
    degraded = 0
    for index, sample in enumerate(plain.samples):
        before, after = plain[index]["image"], augmented[index]["image"]
        if (sample.scenario, sample.group) == ("cr", 0):
            assert not torch.equal(before, after)
            assert high_frequency_share(after) < 0.5 * high_frequency_share(before), sample.path
            degraded += 1
        else:
            assert torch.equal(before, after), (sample.scenario, sample.group)
    assert degraded > 0 and {(s.scenario, s.group) for s in plain.samples} >= {("cr", 1), ("vi", 0), ("cc", 0)}