"""Test-time feature options change the retrieval features as docs/method.md section 2 documents:
``model.flip_test`` averages an image's features with its mirror's, ``model.retrieval_feature: f+v`` concatenates
``f`` with its projection ``v``; the result is L2-normalised, and clustering always reads plain ``f``."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from itkm_lightning.stages.stage1 import Stage1
from itkm_lightning.stages.stage3 import Stage3


def batch_of(images: torch.Tensor) -> dict:
    n = len(images)
    return {"image": images, "scenario": torch.tensor([0, 1, 2, 0][:n]), "group": torch.tensor([0, 1, 0, 1][:n])}


def asymmetric_images() -> torch.Tensor:
    return torch.randn(4, 3, 64, 32, generator=torch.Generator().manual_seed(3))


def stage(module_class, tiny_backbone, **options):
    torch.manual_seed(0)  # every variant gets the same weights
    return module_class(backbone=tiny_backbone.model_copy(update={"dual_branch": True}), **options).eval()


def f_and_v(module, images: torch.Tensor, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        out = module.encoder(images, batch["scenario"], batch["group"])
    return out.f, out.v


@pytest.mark.parametrize("module_class", [Stage1, Stage3])
@pytest.mark.parametrize("flip_test", [False, True])
@pytest.mark.parametrize("retrieval_feature", ["f", "f+v"])
def test_retrieval_features_follow_the_documented_formula(tiny_backbone, module_class, flip_test, retrieval_feature):
    module = stage(module_class, tiny_backbone, flip_test=flip_test, retrieval_feature=retrieval_feature)
    batch = batch_of(asymmetric_images())
    with torch.no_grad():
        got = module.retrieval_features(batch)

    def feature(images: torch.Tensor) -> torch.Tensor:
        f, v = f_and_v(module, images, batch)
        return f if retrieval_feature == "f" else torch.cat([f, v], dim=1)

    expected = feature(batch["image"])
    if flip_test:  # the mean of the image's and its left-right mirror's features
        expected = (expected + feature(batch["image"].flip(-1))) / 2
    torch.testing.assert_close(got, F.normalize(expected, dim=1))
    width = module.encoder.feature_dim + (module.encoder.projection_dim if retrieval_feature == "f+v" else 0)
    assert got.shape == (4, width)


def test_options_change_the_features_and_flip_test_ignores_a_mirror_symmetric_image(tiny_backbone):
    images = asymmetric_images()
    symmetric = (images + images.flip(-1)) / 2
    plain = stage(Stage1, tiny_backbone)
    flipped = stage(Stage1, tiny_backbone, flip_test=True)
    with torch.no_grad():
        assert not torch.allclose(plain.retrieval_features(batch_of(images)),
                                  flipped.retrieval_features(batch_of(images)), atol=1e-4)
        torch.testing.assert_close(flipped.retrieval_features(batch_of(symmetric)),
                                   plain.retrieval_features(batch_of(symmetric)))
        concatenated = stage(Stage1, tiny_backbone, retrieval_feature="f+v").retrieval_features(batch_of(images))
    f_part = concatenated[:, :plain.encoder.feature_dim]
    # the f half of f+v points the same way as f alone, only scaled down by the norm v adds
    torch.testing.assert_close(F.normalize(f_part, dim=1), plain.retrieval_features(batch_of(images)))
    assert (f_part.norm(dim=1) < 1).all()


def test_clustering_reads_plain_f_whatever_the_test_time_options(tiny_backbone):
    images = asymmetric_images()
    batch = batch_of(images)
    plain = stage(Stage1, tiny_backbone)
    expected = F.normalize(f_and_v(plain, images, batch)[0], dim=1)
    for options in ({}, {"flip_test": True}, {"retrieval_feature": "f+v"}):
        with torch.no_grad():
            got = stage(Stage1, tiny_backbone, **options).clustering_features(batch)
        torch.testing.assert_close(got, expected)
