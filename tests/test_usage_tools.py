"""Using a trained model: load it from any source, `itkm embed`, `itkm search`, `itkm export`."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch

from itkm_lightning.command import main

REPO_CONF_SMOKE = __import__("pathlib").Path(__file__).resolve().parents[1] / "conf" / "smoke.yaml"
from itkm_lightning.data import transforms
from itkm_lightning.tools.embedding_files import load_embeddings
from itkm_lightning.tools.features import list_images
from itkm_lightning.tools.model_source import load_image_encoder


def gallery_dir(synthetic_root):
    return synthetic_root / "synthetic" / "tiny" / "cr" / "gallery"


def mixed_batch(encoder, batch=5):
    height, width = encoder.cfg.image_size
    generator = torch.Generator().manual_seed(7)
    return (torch.randn(batch, 3, height, width, generator=generator), torch.tensor([0, 1, 2, 1, 0])[:batch],
            torch.tensor([0, 1, 1, 0, 1])[:batch])


@torch.no_grad()
def features(encoder, inputs):
    return torch.nn.functional.normalize(encoder(*inputs).f, dim=1)


# ------------------------------------------------------------------ model sources
def test_every_model_source_gives_the_trained_encoder(trained):
    run_dir, _, stage = trained
    reference = stage.encoder
    inputs = mixed_batch(reference)
    expected = features(reference, inputs)
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    for source in (ckpt, run_dir):
        encoder, backbone = load_image_encoder(source)
        assert backbone == reference.cfg
        torch.testing.assert_close(features(encoder, inputs), expected)

    # A pipeline run: stage1 handoff (with backbone), then stage3's (weights only) wins.
    stage1 = run_dir / "stage1" / "handoff.pt"
    stage1.parent.mkdir()
    torch.save({"stage": "stage1", "encoder": reference.state_dict(), "backbone": reference.cfg.model_dump()}, stage1)
    torch.testing.assert_close(features(load_image_encoder(run_dir)[0], inputs), expected)
    changed = {k: v + 0.01 if v.is_floating_point() else v for k, v in reference.state_dict().items()}
    (run_dir / "stage3").mkdir()
    torch.save({"stage": "stage3", "encoder": changed, "labels": torch.zeros(3)}, run_dir / "stage3" / "handoff.pt")
    from_stage3 = features(load_image_encoder(run_dir)[0], inputs)
    assert not torch.allclose(from_stage3, expected)  # it did pick stage3's weights


def test_bad_model_sources_say_what_to_pass(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_image_encoder(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="holds no trained model"):
        load_image_encoder(tmp_path)
    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="junk.ckpt cannot be read"):
        load_image_encoder(junk)
    torch.save({"state_dict": {"memory.features": torch.zeros(2)}, "hyper_parameters": {}}, junk)
    with pytest.raises(ValueError, match="no image-encoder weights"):
        load_image_encoder(junk)


# ------------------------------------------------------------------ embed
def test_embed_writes_the_encoders_features_for_a_folder(trained, synthetic_root, tmp_path, capsys):
    from itkm_lightning.data.dataset import load_rgb

    run_dir, _, stage = trained
    reference = stage.encoder
    out = tmp_path / "emb"
    main(["embed", str(gallery_dir(synthetic_root)), "--model", str(run_dir), "--scenario", "cr", "--group", "1",
          "--out", str(out), "--batch_size", "5"])
    feats, rows = load_embeddings(out)
    paths = list_images([gallery_dir(synthetic_root)])
    assert [r["path"] for r in rows] == [str(p) for p in paths]
    assert {(r["scenario"], r["group"]) for r in rows} == {("cr", "1")}
    transform = transforms.test_transform(reference.cfg.image_size)
    images = torch.stack([transform(load_rgb(str(p))) for p in paths[:3]])
    expected = features(reference, (images, torch.full((3,), 1), torch.full((3,), 1)))
    np.testing.assert_allclose(feats[:3], expected.numpy(), atol=1e-5)
    assert "embedded 16 images" in capsys.readouterr().out


def test_embed_reads_tags_from_a_config(trained, synthetic_root, tmp_path):
    run_dir = trained.run_dir
    config = tmp_path / "data.yaml"
    config.write_text(f"data:\n  root: {synthetic_root}\n  sources:\n"
                      "    - class_path: itkm_lightning.data.SyntheticBenchmark\n"
                      "      init_args: {preset: tiny, seed: 0}\n")
    out = tmp_path / "emb"
    main(["embed", "--config", str(config), "--split", "test", "--benchmark", "synthetic_vi", "--model", str(run_dir),
          "--out", str(out)])
    _, rows = load_embeddings(out)
    assert {r["scenario"] for r in rows} == {"vi"} and {r["group"] for r in rows} == {"0", "1"}


def test_embed_without_scenario_is_one_line(trained, synthetic_root, tmp_path, capsys):
    run_dir = trained.run_dir
    with pytest.raises(SystemExit) as exit_info:
        main(["embed", str(gallery_dir(synthetic_root)), "--model", str(run_dir), "--out", str(tmp_path / "e")])
    assert exit_info.value.code == 2
    assert "need --scenario" in capsys.readouterr().err


# ------------------------------------------------------------------ search
def embed(run_dir, folder, out):
    main(["embed", str(folder), "--model", str(run_dir), "--scenario", "cr", "--out", str(out)])
    return out


def test_search_finds_each_gallery_image_first_and_writes_json_table_grid(trained, synthetic_root, tmp_path, capsys):
    run_dir = trained.run_dir
    gallery = embed(run_dir, gallery_dir(synthetic_root), tmp_path / "g")
    queries = list_images([gallery_dir(synthetic_root)])[:4]  # raw images: embedded on the fly
    capsys.readouterr()
    main(["search", *map(str, queries), "--gallery", str(gallery), "--model", str(run_dir), "--scenario", "cr",
          "--topk", "5", "--format", "json", "--out", str(tmp_path / "s")])
    printed = json.loads(capsys.readouterr().out)
    assert [r["query"] for r in printed] == [str(q) for q in queries]
    for entry in printed:
        assert entry["matches"][0]["path"] == entry["query"]  # an image is its own nearest neighbour
        assert entry["matches"][0]["score"] == pytest.approx(1.0, abs=1e-4)
        scores = [m["score"] for m in entry["matches"]]
        assert len(scores) == 5 and scores == sorted(scores, reverse=True)
    saved = json.loads((tmp_path / "s" / "results.json").read_text())
    assert saved["results"] == printed and saved["backend"] == "faiss"
    assert (gallery / "faiss.index").is_file()  # built once, kept with the gallery
    assert (tmp_path / "s" / "grid.png").stat().st_size > 1000

    main(["search", str(queries[0]), "--gallery", str(gallery), "--model", str(run_dir), "--scenario", "cr",
          "--topk", "2"])
    table = capsys.readouterr().out
    assert queries[0].name in table and "rank" in table and "1.000" in table


def test_search_falls_back_to_torch_without_faiss(trained, synthetic_root, tmp_path, capsys, monkeypatch):
    run_dir = trained.run_dir
    gallery = embed(run_dir, gallery_dir(synthetic_root), tmp_path / "g")
    queries = embed(run_dir, synthetic_root / "synthetic" / "tiny" / "cr" / "query", tmp_path / "q")
    capsys.readouterr()
    main(["search", str(queries), "--gallery", str(gallery), "--topk", "4", "--format", "json"])
    with_faiss = json.loads(capsys.readouterr().out)
    monkeypatch.setitem(sys.modules, "faiss", None)  # `import faiss` now raises ImportError
    main(["search", str(queries), "--gallery", str(gallery), "--topk", "4", "--format", "json", "--out",
          str(tmp_path / "s")])
    without = json.loads(capsys.readouterr().out)
    assert json.loads((tmp_path / "s" / "results.json").read_text())["backend"] == "torch"
    def ranked_paths(results):
        return [[m["path"] for m in r["matches"]] for r in results]

    assert ranked_paths(without) == ranked_paths(with_faiss)
    np.testing.assert_allclose([[m["score"] for m in r["matches"]] for r in without],
                               [[m["score"] for m in r["matches"]] for r in with_faiss], atol=1e-5)
    with pytest.raises(SystemExit):
        main(["search", str(queries), "--gallery", str(gallery), "--backend", "faiss"])
    assert "pip install faiss-cpu" in capsys.readouterr().err


@pytest.mark.parametrize("backend", ["faiss", "torch"])
def test_gallery_search_is_the_clustering_top_k_exactly(backend, tmp_path):
    """`itkm search` ranks with clustering's knn: the same numbers as the flat faiss index and the torch matmul +
    topk it used to run itself, bit for bit (ties included), and a saved index reads back to the same result."""
    from itkm_lightning.tools.search import GalleryIndex, normalize

    if backend == "faiss":
        faiss = pytest.importorskip("faiss")
    rng = np.random.default_rng(0)
    gallery, queries = rng.normal(size=(300, 16)).astype(np.float32), rng.normal(size=(40, 16)).astype(np.float32)
    gallery[1] = gallery[0]  # a tie
    index = GalleryIndex(gallery, backend)
    got = index.search(queries, 7)
    if backend == "faiss":
        reference = faiss.IndexFlatIP(16)
        reference.add(normalize(gallery))
        expected = reference.search(normalize(queries), 7)
    else:
        top = (torch.from_numpy(normalize(queries)) @ torch.from_numpy(normalize(gallery)).T).topk(7, dim=1)
        expected = top.values.numpy(), top.indices.numpy()
    for a, b in zip(got, expected):
        assert a.dtype == b.dtype and np.array_equal(a, b)
    assert [a.shape for a in index.search(queries, 1000)] == [(40, 300), (40, 300)]  # k beyond the gallery: all
    if backend == "faiss":
        (tmp_path / "features.npy").write_bytes(b"")
        GalleryIndex.for_embedding_dir(tmp_path, gallery, backend)  # builds and saves faiss.index
        loaded = GalleryIndex.for_embedding_dir(tmp_path, gallery, backend)
        assert all(np.array_equal(a, b) for a, b in zip(loaded.search(queries, 7), got))


def test_search_of_images_without_a_model_names_the_fix(synthetic_root, tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["search", str(gallery_dir(synthetic_root)), "--gallery", str(gallery_dir(synthetic_root))])
    assert "pass --model" in capsys.readouterr().err


def test_embed_of_a_dataset_split_keeps_pid_camid_clothes(trained, synthetic_root, tmp_path):
    from itkm_lightning.tools.features import samples_from_config

    run_dir = trained.run_dir
    config = tmp_path / "data.yaml"
    config.write_text(f"data:\n  root: {synthetic_root}\n  sources: [synthetic]\n")
    for split in ("query", "gallery"):
        main(["embed", "--config", str(REPO_CONF_SMOKE), "--config", str(config), "--split", split, "--benchmark",
              "synthetic_cc", "--model", str(run_dir), "--out", str(tmp_path / split)])
    _, rows = load_embeddings(tmp_path / "query")
    samples = samples_from_config([REPO_CONF_SMOKE, config], "query", "synthetic_cc")
    assert list(rows[0]) == ["path", "scenario", "group", "pid", "camid", "clothes"]
    assert [(r["pid"], r["camid"], r["clothes"]) for r in rows] == [(str(s.pid), str(s.camid), s.clothes)
                                                                   for s in samples]
    # Loose images know nothing about identities: no label columns (not a column of -1).
    loose = embed(run_dir, gallery_dir(synthetic_root), tmp_path / "loose")
    assert list(load_embeddings(loose)[1][0]) == ["path", "scenario", "group"]


@pytest.mark.parametrize("protocol", ["market", "cloth_changing"])
def test_search_evaluate_scores_two_embed_folders(protocol, trained, synthetic_root, tmp_path, capsys):
    from itkm_lightning.evaluation import cosine_distance, evaluate_rank, re_ranking, summarize

    test_embed_of_a_dataset_split_keeps_pid_camid_clothes(trained, synthetic_root, tmp_path)
    (q, q_rows), (g, g_rows) = load_embeddings(tmp_path / "query"), load_embeddings(tmp_path / "gallery")
    capsys.readouterr()
    main(["search", str(tmp_path / "query"), "--gallery", str(tmp_path / "gallery"), "--evaluate", "--protocol",
          protocol, "--format", "json", "--out", str(tmp_path / "s")])
    metrics = json.loads(capsys.readouterr().out)["metrics"]

    def labels(rows, key):
        return np.array([int(r[key]) if key != "clothes" else r[key] for r in rows])

    clothes = {"q_clothes": labels(q_rows, "clothes"), "g_clothes": labels(g_rows, "clothes")}
    expected = summarize(evaluate_rank(cosine_distance(q, g), labels(q_rows, "pid"), labels(g_rows, "pid"),
                                       labels(q_rows, "camid"), labels(g_rows, "camid"), protocol=protocol,
                                       **(clothes if protocol == "cloth_changing" else {})))
    assert set(metrics) == {*expected, "protocol"} and metrics["protocol"] == protocol
    assert all(metrics[k] == pytest.approx(v, abs=1e-6) for k, v in expected.items())
    assert json.loads((tmp_path / "s" / "results.json").read_text())["metrics"] == metrics
    main(["search", str(tmp_path / "query"), "--gallery", str(tmp_path / "gallery"), "--evaluate", "--rerank"])
    assert "evaluation (market protocol, re-ranked): mAP" in capsys.readouterr().out
    reranked = summarize(evaluate_rank(re_ranking(cosine_distance(q, g), cosine_distance(q, q), cosine_distance(g, g)),
                                       labels(q_rows, "pid"), labels(g_rows, "pid"), labels(q_rows, "camid"),
                                       labels(g_rows, "camid")))
    main(["search", str(tmp_path / "query"), "--gallery", str(tmp_path / "gallery"), "--evaluate", "--rerank",
          "--format", "json"])
    got = json.loads(capsys.readouterr().out)["metrics"]
    assert all(got[k] == pytest.approx(v, abs=1e-6) for k, v in reranked.items())


def test_search_evaluate_without_labels_is_one_line(trained, synthetic_root, tmp_path, capsys):
    run_dir = trained.run_dir
    loose = embed(run_dir, gallery_dir(synthetic_root), tmp_path / "loose")
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(["search", str(loose), "--gallery", str(loose), "--evaluate"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "Traceback" not in err
    assert "index.csv has no pid/camid column; embed the queries from a dataset" in err


# ------------------------------------------------------------------ export
@pytest.mark.parametrize("fmt, suffix", [("torchscript", ".pt"), ("program", ".pt2")])
def test_export_matches_the_checkpoint(fmt, suffix, trained, tmp_path, capsys):
    """Parity tolerance: max |exported - checkpoint| < 1e-5 on normalised features, mixed scenarios and groups,
    with batch sizes other than the trace's (5 and 1)."""
    from itkm_lightning.tools.export import load_exported

    run_dir, _, stage = trained
    reference = stage.encoder
    out = tmp_path / f"encoder{suffix}"
    main(["export", str(run_dir / "checkpoints" / "last.ckpt"), "--out", str(out), "--format", fmt])
    assert "max abs diff" in capsys.readouterr().out
    exported = load_exported(out)
    inputs = mixed_batch(reference, batch=5)
    with torch.no_grad():
        got = exported(*inputs)
    assert got.shape == (5, reference.feature_dim)
    assert float((got - features(reference, inputs)).abs().max()) < 1e-5
    single = tuple(x[:1] for x in inputs)
    with torch.no_grad():
        assert float((exported(*single) - features(reference, single)).abs().max()) < 1e-5
    spec = json.loads((tmp_path / f"encoder{suffix}.json").read_text())
    assert spec["image_size"] == list(reference.cfg.image_size) and spec["parity_max_abs_diff"] < 1e-5
    assert sorted(p.name for p in tmp_path.iterdir() if p.name not in ("run", "other")) == [f"encoder{suffix}", f"encoder{suffix}.json"]


def test_onnx_export_reports_missing_packages(trained, tmp_path, capsys):
    from itkm_lightning.tools.export import onnx_available

    if onnx_available():
        pytest.skip("onnx is installed here; the missing-package message cannot be shown")
    run_dir = trained.run_dir
    with pytest.raises(SystemExit):
        main(["export", str(run_dir), "--format", "onnx", "--out", str(tmp_path / "e.onnx")])
    assert "pip install onnx onnxscript" in capsys.readouterr().err


def test_a_pretrained_backbone_needs_only_its_config_to_open_a_checkpoint(tmp_path, tiny_backbone):
    """A checkpoint of a `pretrained: true` run opens from config.json alone (the weights come from the checkpoint)."""
    from itkm_lightning.models.backbone_config import BackboneConfig
    from itkm_lightning.models.clip_image import CLIPImageEncoder
    from itkm_lightning.models.clip_loading import random_clip_model

    clip_dir = tmp_path / "clip"
    random_clip_model(tiny_backbone).save_pretrained(str(clip_dir))
    pretrained = BackboneConfig(name_or_path=str(clip_dir), image_size=(64, 32))
    reference = CLIPImageEncoder(pretrained).eval()
    for weights in clip_dir.glob("*.safetensors"):
        weights.unlink()  # only config.json is left
    handoff = tmp_path / "stage1" / "handoff.pt"
    handoff.parent.mkdir()
    torch.save({"stage": "stage1", "encoder": reference.state_dict(), "backbone": pretrained.model_dump()}, handoff)
    encoder, backbone = load_image_encoder(handoff)
    assert backbone == pretrained
    inputs = mixed_batch(reference)
    torch.testing.assert_close(features(encoder, inputs), features(reference, inputs))
    (clip_dir / "config.json").unlink()
    with pytest.raises(Exception, match="config.json is not available locally"):
        load_image_encoder(handoff)
