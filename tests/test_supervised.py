"""The supervised reference (stages/supervised.py): ground-truth identities in place of clustering, and only there.

One label and one memory entry per true person of a scenario, shared by both of its groups; memory logits over
the scenario's people; P x K batches mixing both groups; off unless the config enables it.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from itkm_lightning.callbacks.ground_truth import GroundTruthLabelCallback, ground_truth_labels
from itkm_lightning.callbacks.pseudo_labels import PseudoLabelCallback
from itkm_lightning.data.datamodule import ReIDDataModule
from itkm_lightning.data.sampler import PseudoIdentityBatchSampler
from itkm_lightning.data.schema import SCENARIOS, Sample
from itkm_lightning.data.sources import SyntheticBenchmark
from itkm_lightning.stages.stage1 import Stage1
from itkm_lightning.stages.supervised import SupervisedStage1

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture()
def datamodule(synthetic_root):
    dm = ReIDDataModule(sources=[SyntheticBenchmark(preset="tiny", seed=0)], root=str(synthetic_root),
                        image_size=(64, 32), num_clusters_per_batch=3, num_instances=4, iters_per_epoch=4,
                        test_batch_size=64, num_workers=0)
    dm.prepare_data()
    dm.setup("fit")
    return dm


def test_one_label_per_true_person_shared_by_both_groups(datamodule):
    samples = datamodule.train_samples
    labels = ground_truth_labels(samples)
    people = {(s.scenario, s.identity) for s in samples}
    assert sorted(set(labels.tolist())) == list(range(len(people)))
    for i, a in enumerate(samples):
        for j in range(i + 1, len(samples)):
            b = samples[j]
            assert (labels[i] == labels[j]) == ((a.scenario, a.identity) == (b.scenario, b.identity))
    # every person of the tiny world has pictures in both groups of their scenario, all under one label
    for label in set(labels.tolist()):
        assert {samples[i].group for i in np.flatnonzero(labels == label)} == {0, 1}
    # a cc picture and its clothing-agnostic view are the same person
    cc = {(s.path, s.group): labels[i] for i, s in enumerate(samples) if s.scenario == "cc"}
    assert all(cc[(path, 1)] == label for (path, group), label in cc.items() if group == 0)


def test_same_pid_in_two_sources_is_two_people():
    a = Sample(path="a.png", pid=1, camid=0, scenario="vi", group=0, source="sysu")
    b = Sample(path="b.png", pid=1, camid=1, scenario="vi", group=1, source="sysu")
    c = Sample(path="c.png", pid=1, camid=0, scenario="vi", group=0, source="regdb")
    assert ground_truth_labels([a, b, c]).tolist() == [0, 0, 1]


def test_labeler_gives_scenario_memory_and_batches_mixing_both_groups(datamodule, tiny_backbone):
    module = SupervisedStage1(backbone=tiny_backbone)
    trainer = SimpleNamespace(datamodule=datamodule)
    GroundTruthLabelCallback().on_fit_start(trainer, module)

    labels = ground_truth_labels(datamodule.train_samples)
    assert (datamodule.pseudo_labels == labels).all()
    # one memory entry per person, in its scenario's block: logits run over the scenario's people, both groups
    assert module.memory.num_clusters == labels.max() + 1
    for i, s in enumerate(datamodule.train_samples):
        assert int(module.memory.blocks[labels[i]]) == SCENARIOS.index(s.scenario)
    f = torch.nn.functional.normalize(torch.randn(len(labels), module.encoder.feature_dim), dim=1)
    logits = module.memory.logits(f, module.memory.blocks[torch.from_numpy(labels)], 0.05)
    scenario = torch.from_numpy(datamodule.scenario_of_index)
    same_scenario = scenario[:, None] == module.memory.blocks[None, :]
    assert torch.isfinite(logits[same_scenario]).all() and torch.isinf(logits[~same_scenario]).all()

    batches = list(datamodule.train_dataloader().batch_sampler)
    assert len(batches) == 4
    for batch in batches:
        for label in set(labels[batch].tolist()):
            groups = [datamodule.train_samples[i].group for i in batch if labels[i] == label]
            assert len(groups) == 4 and groups.count(0) == groups.count(1) == 2  # K = 4: two of each group
        # P = 3 people, round-robin over the three scenarios (not over six (scenario, group) blocks)
        assert sorted(datamodule.scenario_of_index[batch].tolist()) == [0] * 4 + [1] * 4 + [2] * 4


def test_balanced_draws_take_what_a_small_group_has():
    labels = np.zeros(6, dtype=np.int64)
    groups = np.array([0, 0, 0, 0, 0, 1])
    sampler = PseudoIdentityBatchSampler(np.concatenate([labels, labels + 1]), np.zeros(12, dtype=np.int64),
                                         num_clusters=2, num_instances=4, iters_per_epoch=5,
                                         group_of_index=np.concatenate([groups, groups]))
    for batch in sampler:
        assert len(batch) == len(set(batch)) == 8
        assert sorted(i % 6 == 5 for i in batch) == [False] * 6 + [True] * 2  # the lone group-1 picture each


def test_only_the_supervised_stage_reads_ground_truth(tiny_backbone):
    from itkm_lightning.stages.stage2 import Stage2
    from itkm_lightning.stages.stage3 import Stage3

    assert SupervisedStage1.reads_ground_truth and SupervisedStage1.stage_name == "supervised"
    assert not any(getattr(cls, "reads_ground_truth", False) for cls in (Stage1, Stage2, Stage3))
    fitting = SimpleNamespace(state=SimpleNamespace(fn="fit"))
    stage1, supervised = Stage1(backbone=tiny_backbone), SupervisedStage1(backbone=tiny_backbone)
    stage1.trainer = supervised.trainer = fitting
    assert [type(c) for c in stage1.configure_callbacks()] == [PseudoLabelCallback]
    assert [type(c) for c in supervised.configure_callbacks()] == [GroundTruthLabelCallback]


def test_pipeline_builds_the_reference_from_stage1s_arguments_with_its_own_optimiser(tiny_backbone):
    from itkm_lightning.config import OptimConfig, SupervisedConfig
    from itkm_lightning.pipeline import supervised_stage

    stage1 = Stage1(backbone=tiny_backbone, temperature=0.07, memory_momentum=0.2)
    own = supervised_stage(stage1, SupervisedConfig(enabled=True, optim=OptimConfig(lr=1e-3, lr_new=2e-3)))
    assert isinstance(own, SupervisedStage1)
    assert own.backbone_config == tiny_backbone and own.temperature == 0.07 and own.memory.momentum == 0.2
    assert (own.optim.lr, own.optim.lr_new) == (1e-3, 2e-3)
    assert supervised_stage(stage1, SupervisedConfig(enabled=True)).optim == stage1.optim  # default: Stage I's


@pytest.mark.parametrize("config, enabled", [("ums.yaml", False), ("smoke.yaml", False), ("demo.yaml", True)])
def test_the_reference_runs_only_where_a_config_enables_it(config, enabled, capsys):
    import yaml

    from itkm_lightning.command import main

    with pytest.raises(SystemExit):
        main(["fit", "--config", str(REPO / "conf" / config), "--print_config"])
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["supervised"]["enabled"] is enabled
    if enabled:
        assert printed["epochs"]["supervised"] >= 1


def test_results_say_how_far_a_stage_got_towards_the_reference(tmp_path):
    from itkm_lightning.results import ResultsFile

    results = ResultsFile(tmp_path / "results.json")
    results.record("untrained", {"a": {"mAP": 0.10, "R1": 0.1}, "b": {"mAP": 0.50, "R1": 0.5}})
    assert results.gap_closed("stage3") == {}  # no supervised row yet
    results.record("stage3", {"a": {"mAP": 0.20, "R1": 0.2}, "b": {"mAP": 0.49, "R1": 0.5}})
    results.record("supervised", {"a": {"mAP": 0.50, "R1": 0.5}, "b": {"mAP": 0.505, "R1": 0.5}})
    gaps = results.gap_closed("stage3")
    assert gaps["a"] == pytest.approx(0.25)  # 10 -> 20 of the way 10 -> 50
    assert gaps["b"] is None  # the reference gains less than 1 mAP: nothing to close
    assert gaps["mean"] == pytest.approx((0.345 - 0.30) / (0.5025 - 0.30))
    assert list(ResultsFile(tmp_path / "results.json").data) == ["untrained", "stage3", "supervised"]
    header = [c.header for c in results.table().columns]
    assert header[-1].startswith("supervised")  # the last column, beside the others


@pytest.mark.slow
def test_fit_writes_a_supervised_row_beside_the_others_and_skips_it_when_done(tmp_path, synthetic_root, capsys):
    import json

    from itkm_lightning.command import main
    from itkm_lightning.handoffs import handoff_path, load_handoff

    run_dir = tmp_path / "run"
    args = ["fit", "--config", str(REPO / "conf/smoke.yaml"), "--data.root", str(synthetic_root),
            "--run_dir", str(run_dir), "--supervised.enabled", "true", "--epochs.supervised", "2",
            "--trainer.enable_progress_bar", "false"]
    main([*args, "--stage", "supervised"])  # alone: no other stage has run
    results = json.loads((run_dir / "results.json").read_text())
    assert list(results) == ["raw_pixels", "untrained", "supervised"]
    assert set(results["supervised"]) == {"synthetic_vi", "synthetic_cr", "synthetic_cc"}
    handoff = load_handoff(handoff_path(run_dir, "supervised"))
    assert handoff["stage"] == "supervised" and handoff["labels"].max() + 1 == 3 * 6  # 6 people per scenario
    metrics = (run_dir / "supervised" / "logs" / "metrics.csv").read_text()
    assert "train/loss_homo" in metrics and "val/synthetic_vi/mAP" in metrics and "pseudo/" not in metrics
    assert {"train_supervised", "handoff_supervised"} <= set(json.loads((run_dir / "timings.json").read_text()))
    capsys.readouterr()

    mtime = (run_dir / "supervised" / "checkpoints" / "last.ckpt").stat().st_mtime_ns
    main([*args, "--stage", "stage1"])  # the method runs beside it; the reference is not retrained
    assert (run_dir / "supervised" / "checkpoints" / "last.ckpt").stat().st_mtime_ns == mtime
    results = json.loads((run_dir / "results.json").read_text())
    assert list(results) == ["raw_pixels", "untrained", "stage1", "supervised"]
    out = capsys.readouterr().out
    assert "supervised" in out and "stage1 got this far from untrained towards supervised" in out


def test_the_reference_has_its_own_epochs_and_validation_cadence(synthetic_root, tmp_path):
    from itkm_lightning.cli import ITKMCLI

    cli = ITKMCLI(args=["--config", str(REPO / "conf/smoke.yaml"), "--data.root", str(synthetic_root),
                        "--run_dir", str(tmp_path / "run"), "--supervised.enabled", "true",
                        "--epochs.supervised", "5", "--supervised.check_val_every_n_epoch", "5"], run=False)
    stage1 = cli.trainer
    supervised = cli.trainer_setup.build("supervised")
    assert (stage1.max_epochs, stage1.check_val_every_n_epoch) == (2, 1)  # smoke.yaml's trainer section
    assert (supervised.max_epochs, supervised.check_val_every_n_epoch) == (5, 5)
    assert supervised.default_root_dir == str(tmp_path / "run" / "supervised")


def test_printed_table_is_not_wrapped_in_a_log(tmp_path, capsys):
    from itkm_lightning.results import ResultsFile

    results = ResultsFile(tmp_path / "results.json")
    row = {f"synthetic_benchmark_{i}": {"mAP": 0.123, "R1": 0.456} for i in range(3)}
    for stage in ("raw_pixels", "untrained", "stage1", "stage3", "supervised"):
        results.record(stage, row)
    results.print()  # captured output is not a terminal: 80 columns would squeeze six columns
    out = capsys.readouterr().out
    assert all(f"synthetic_benchmark_{i}" in out for i in range(3))
    assert out.count("12.3 / 45.6") == 5 * 4  # every cell whole, on one line (3 benchmarks and the mean)
