"""The three-stage run (pipeline.py): order, hand-overs, skipping finished stages, resuming an interrupted one.

Most tests drive ``Pipeline`` with tiny stand-in stages (a scalar to train, no images), so they take seconds;
one slow test runs ``itkm fit`` with the real Stage I and the stand-ins of tests/fake_stages.py.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from itkm_lightning.fit_config import selected_stage
from itkm_lightning.handoffs import Handoff, Stage1Handoff, handoff_path, load_handoff, save_handoff
from itkm_lightning.pipeline import Pipeline, StageOrderError, StageSpec
from itkm_lightning.stages.protocol import ImageStage, Stage
from itkm_lightning.trainer_setup import stage_trainer_kwargs

REPO = Path(__file__).resolve().parents[1]


@dataclass(eq=False)
class ScalarHandoff(Handoff):
    weights: dict[str, torch.Tensor]
    received: list[str]
    epochs_run: list[int]


class ScalarStage(L.LightningModule):
    """A stage-contract stand-in (stages/protocol.py): one weight pulled towards 1; 'evaluates' by reporting it."""

    checkpoint_omits = ()
    backbone_config = None
    rerank = None

    def __init__(self, name: str, evaluates_images: bool, crash_at_epoch: int | None = None) -> None:
        super().__init__()
        self.stage_name = name
        self.evaluates_images = evaluates_images
        # What a stage of this name reads, as the real stages declare it (the supervised reference: nothing).
        before = {"stage2": ["stage1"], "stage3": ["stage1", "stage2"]}.get(name, [])
        self.receives = {n: ScalarHandoff for n in before}
        self.crash_at_epoch = crash_at_epoch
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.received: dict = {}
        self.epochs_run: list[int] = []
        self.benchmark_results: dict = {}
        self.benchmark_results_step = -1

    def receive_handoff(self, handoffs: dict[str, Handoff]) -> None:
        self.received = handoffs
        if "stage1" in handoffs:  # continue from the predecessor's weights, as Stage III does
            self.weight.data.copy_(handoffs["stage1"].weights["weight"])

    def fit_kwargs(self, datamodule, stage_dir: Path) -> dict:
        return {"datamodule": datamodule}

    def on_train_epoch_start(self) -> None:
        if self.crash_at_epoch == self.current_epoch:
            raise RuntimeError(f"simulated crash at epoch {self.current_epoch}")
        self.epochs_run.append(self.current_epoch)

    def training_step(self, batch, batch_idx):
        loss = (self.weight - 1.0).pow(2).sum()
        self.log("train/loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        pass

    def on_validation_epoch_end(self) -> None:
        value = float(self.weight.detach())
        self.benchmark_results = {"toy": {"mAP": value, "R1": value}}
        self.benchmark_results_step = self.global_step

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def make_handoff(self, datamodule) -> ScalarHandoff:
        return ScalarHandoff(stage=self.stage_name, weights={"weight": self.weight.detach().clone()},
                             received=sorted(self.received), epochs_run=list(self.epochs_run))

    def extra_results(self) -> dict:
        return {}


class ToyData(L.LightningDataModule):
    benchmarks: list = []

    def train_dataloader(self):
        return DataLoader(TensorDataset(torch.zeros(4, 1)), batch_size=2)

    def val_dataloader(self):
        return DataLoader(TensorDataset(torch.zeros(2, 1)), batch_size=2)


class ToyStageSpec(StageSpec):
    """A stage built by the test (``builder(name)``), so that it can count builds."""

    def __init__(self, name: str, builder, independent: bool = False) -> None:
        super().__init__(name, independent=independent)
        object.__setattr__(self, "builder", builder)

    def build(self):
        return self.builder(self.name)


class ToyTrainers:
    """Small CPU Trainers with the stage's own folder, checkpoints and logs (trainer_setup.stage_trainer_kwargs)."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir

    def build(self, stage: str) -> L.Trainer:
        return L.Trainer(**stage_trainer_kwargs(self.run_dir / stage), max_epochs=3, accelerator="cpu",
                         enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                         log_every_n_steps=1, check_val_every_n_epoch=100)


class Run:
    """A pipeline over three ScalarStages in ``run_dir``, counting which stages were built."""

    def __init__(self, run_dir: Path, crash: dict[str, int] | None = None, only: str | None = None,
                 supervised: bool = False) -> None:
        self.run_dir = run_dir
        self.built: list[str] = []
        self.modules: dict[str, ScalarStage] = {}
        crash = crash or {}

        def build(name: str) -> ScalarStage:
            self.built.append(name)
            self.modules[name] = ScalarStage(name, evaluates_images=name != "stage2", crash_at_epoch=crash.get(name))
            return self.modules[name]

        specs = [ToyStageSpec(n, build) for n in ("stage1", "stage2", "stage3")]
        if supervised:  # the supervised reference: starts from the backbone, as stage1 does
            specs.append(ToyStageSpec("supervised", build, independent=True))
        self.pipeline = Pipeline(run_dir, ToyData(), specs, ToyTrainers(run_dir), command="itkm fit --config x.yaml")
        self.only = only

    def __call__(self) -> None:
        self.pipeline.run(only=self.only)


def test_stand_ins_follow_the_stage_contract(tiny_backbone):
    from fake_stages import FakeStage2, FakeStage3

    assert isinstance(ScalarStage("stage1", True), ImageStage) and isinstance(ScalarStage("stage2", False), Stage)
    assert isinstance(FakeStage2(), Stage) and isinstance(FakeStage3(backbone=tiny_backbone), ImageStage)


def test_three_stages_run_in_order_and_hand_over(tmp_path):
    run = Run(tmp_path)
    run()
    assert run.built == ["stage1", "stage2", "stage3"]
    for name in ("stage1", "stage2", "stage3"):
        assert (tmp_path / name / "checkpoints" / "last.ckpt").is_file()
        assert "train/loss" in (tmp_path / name / "logs" / "metrics.csv").read_text()
    h2 = load_handoff(handoff_path(tmp_path, "stage2"))
    h3 = load_handoff(handoff_path(tmp_path, "stage3"))
    assert h2["received"] == ["stage1"] and h3["received"] == ["stage1", "stage2"]
    # Stage 3 started from stage 1's trained weight, so it ends closer to 1 than stage 1 did.
    w1 = float(load_handoff(handoff_path(tmp_path, "stage1"))["weights"]["weight"])
    assert 0.0 < w1 < float(h3["weights"]["weight"]) < 1.0
    results = json.loads((tmp_path / "results.json").read_text())
    assert list(results) == ["raw_pixels", "untrained", "stage1", "stage3"]  # stage2 evaluates no images
    assert results["untrained"]["toy"]["mAP"] == 0.0
    assert results["stage1"]["toy"]["mAP"] == pytest.approx(w1)
    timings = json.loads((tmp_path / "timings.json").read_text())
    assert {"train_stage1", "handoff_stage1", "train_stage2", "eval_stage3"} <= set(timings)


def test_rerun_skips_finished_stages(tmp_path):
    Run(tmp_path)()
    stamps = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file()}
    again = Run(tmp_path)
    again()
    assert again.built == []
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file()} == stamps


def test_crash_mid_stage_resumes_that_stage_from_its_checkpoint(tmp_path):
    crashed = Run(tmp_path, crash={"stage2": 2})
    with pytest.raises(RuntimeError, match="simulated crash"):
        crashed()
    assert handoff_path(tmp_path, "stage1").is_file() and not handoff_path(tmp_path, "stage2").exists()
    assert (tmp_path / "stage2" / "checkpoints" / "last.ckpt").is_file()
    assert crashed.modules["stage2"].epochs_run == [0, 1]

    resumed = Run(tmp_path)
    resumed()
    assert resumed.built == ["stage2", "stage3"]  # stage1 is finished: not rebuilt, not retrained
    assert load_handoff(handoff_path(tmp_path, "stage2"))["epochs_run"] == [2]  # epochs 0-1 came from the checkpoint
    assert load_handoff(handoff_path(tmp_path, "stage3"))["epochs_run"] == [0, 1, 2]


def test_deleted_handoff_reruns_only_that_stage_from_its_checkpoint(tmp_path):
    Run(tmp_path)()
    handoff_path(tmp_path, "stage2").unlink()
    again = Run(tmp_path)
    again()
    assert again.built == ["stage2"]
    assert load_handoff(handoff_path(tmp_path, "stage2"))["epochs_run"] == []  # its training had finished


def test_single_stage_needs_its_predecessors(tmp_path):
    run = Run(tmp_path, only="stage3")
    with pytest.raises(StageOrderError) as err:
        run()
    message = str(err.value)
    assert "\n" not in message and "itkm fit --config x.yaml --stage stage1" in message
    assert run.built == [] and not tmp_path.joinpath("stage3").exists()

    Run(tmp_path, only="stage1")()
    with pytest.raises(StageOrderError, match="--stage stage2"):
        Run(tmp_path, only="stage3")()
    only2 = Run(tmp_path, only="stage2")
    only2()
    assert only2.built == ["stage2"] and not handoff_path(tmp_path, "stage3").exists()


def test_a_stage_section_of_another_stage_is_refused(tmp_path):
    from itkm_lightning.fit_config import parse_fit_config

    cfg = parse_fit_config([str(REPO / "conf/smoke.yaml")], ["--stage2.class_path", "itkm_lightning.stages.stage3.Stage3"])
    with pytest.raises(ValueError, match="stage2.class_path itkm_lightning.stages.stage3.Stage3 is a stage3 module"):
        StageSpec("stage2", section=cfg.stage2).build()


def test_supervised_reference_runs_last_from_the_start_and_hands_nothing_on(tmp_path):
    run = Run(tmp_path, supervised=True)
    run()
    assert run.built == ["stage1", "stage2", "stage3", "supervised"]
    h1, hs = (load_handoff(handoff_path(tmp_path, n)) for n in ("stage1", "supervised"))
    assert hs["received"] == [] and load_handoff(handoff_path(tmp_path, "stage3"))["received"] == ["stage1", "stage2"]
    assert float(hs["weights"]["weight"]) == pytest.approx(float(h1["weights"]["weight"]))  # same start, same steps
    results = json.loads((tmp_path / "results.json").read_text())
    assert list(results) == ["raw_pixels", "untrained", "stage1", "stage3", "supervised"]
    assert "train_supervised" in json.loads((tmp_path / "timings.json").read_text())
    assert run.pipeline.final_module is run.modules["stage3"]  # figures show the method's model, not the reference


def test_supervised_reference_alone_needs_no_predecessor_and_resumes(tmp_path):
    alone = Run(tmp_path, only="supervised", supervised=True, crash={"supervised": 1})
    with pytest.raises(RuntimeError, match="simulated crash"):
        alone()
    assert alone.built == ["supervised"] and not (tmp_path / "stage1").exists()
    resumed = Run(tmp_path, only="supervised", supervised=True)
    resumed()
    assert load_handoff(handoff_path(tmp_path, "supervised"))["epochs_run"] == [1, 2]  # epoch 0 from the checkpoint
    assert list(json.loads((tmp_path / "results.json").read_text())) == ["raw_pixels", "untrained", "supervised"]
    rest = Run(tmp_path, supervised=True)
    rest()
    assert rest.built == ["stage1", "stage2", "stage3"]  # the finished reference is skipped


def test_supervised_stage_is_off_unless_configured(tmp_path):
    with pytest.raises(ValueError, match="supervised.enabled"):
        Run(tmp_path, only="supervised")()
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("value, expected", [("all", None), (None, None), ("2", "stage2"), ("stage3", "stage3"),
                                             ("supervised", "supervised")])
def test_stage_selector(value, expected):
    assert selected_stage(value) == expected


def test_handoff_files_hold_only_plain_contents_and_are_written_whole(tmp_path):
    path = tmp_path / "stage9" / "handoff.pt"
    with pytest.raises(TypeError, match=r"handoff\['labels'\].*numpy"):
        save_handoff(path, {"labels": np.zeros(3)})
    assert not path.exists()
    save_handoff(path, {"w": torch.ones(2), "names": [("vi", 0)], "cfg": {"a": None, "b": 1.5}})
    assert list(path.parent.iterdir()) == [path]  # no temporary file left behind
    assert load_handoff(path)["names"] == [("vi", 0)]
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="delete it"):
        load_handoff(path)


# ------------------------------------------------------------------ Stage I's hand-over
def test_stage1_handoff_is_the_final_encoder_and_a_fresh_clustering(tmp_path, synthetic_root, tiny_backbone):
    from itkm_lightning.clustering.blocks import cluster_blocks
    from itkm_lightning.config import ClusteringConfig
    from itkm_lightning.data.datamodule import ReIDDataModule
    from itkm_lightning.data.sources import SyntheticBenchmark
    from itkm_lightning.stages.stage1 import Stage1

    dm = ReIDDataModule([SyntheticBenchmark(preset="tiny", seed=0)], root=str(synthetic_root), image_size=(64, 32),
                        test_batch_size=64, num_workers=0)
    dm.setup("fit")
    model = Stage1(backbone=tiny_backbone, clustering=ClusteringConfig(eps=0.7, min_samples=2, k1=6, k2=3))
    made = model.make_handoff(dm)
    assert isinstance(made, Stage1Handoff)
    handoff = made.to_dict()

    assert list(handoff) == ["stage", "encoder", "backbone", "labels", "blocks", "block_names", "paths"]
    assert handoff["stage"] == "stage1"
    expected = cluster_blocks(model.extract(dm.cluster_dataloader()).numpy(), dm.block_of_index, model.clustering)
    assert torch.equal(handoff["labels"], torch.from_numpy(expected)) and handoff["labels"].dtype == torch.long
    assert (handoff["labels"] >= 0).any()
    assert handoff["blocks"].tolist() == dm.block_of_index.tolist()
    assert handoff["block_names"] == [tuple(b) for b in dm.blocks]
    assert handoff["paths"] == [str(s.path) for s in dm.train_samples]
    state = model.encoder.state_dict()
    assert set(handoff["encoder"]) == set(state)
    for key, value in handoff["encoder"].items():
        assert value.device.type == "cpu" and torch.equal(value, state[key].float() if value.is_floating_point()
                                                          else state[key])
    # Weights only: a saved hand-over reloads with weights_only=True and carries no training state.
    save_handoff(tmp_path / "handoff.pt", handoff)
    reloaded = load_handoff(tmp_path / "handoff.pt")
    flat = json.dumps({k: v for k, v in reloaded.items() if k not in ("encoder", "labels", "blocks")})
    assert "optimizer" not in flat and not any("optimizer" in k or "memory" in k for k in reloaded["encoder"])
    from itkm_lightning.models.backbone_config import BackboneConfig

    assert BackboneConfig(**reloaded["backbone"]) == tiny_backbone
    # What Stage II / III receive from the file is what they would get in the same process.
    received, direct = Stage1Handoff.from_dict(reloaded), Stage1Handoff.from_dict(handoff)
    for key in ("labels", "blocks"):
        assert torch.equal(getattr(received, key), getattr(direct, key))
    assert (received.block_names, received.paths) == (direct.block_names, direct.paths)


# ------------------------------------------------------------------ the command
def _fake_stages_config(tmp_path: Path, **stage2_args) -> Path:
    override = tmp_path / "fakes.yaml"
    override.write_text(
        "stage2: {class_path: fake_stages.FakeStage2, init_args: " + json.dumps(stage2_args) + "}\n"
        "stage3: {class_path: fake_stages.FakeStage3, init_args: {clustering: {eps: 0.7, min_samples: 2, k1: 6, k2: 3},"
        " optim: {lr: 1.0e-3, lr_new: 1.0e-3, warmup_epochs: 0}}}\n"
        "epochs: {stage1: 1, stage2: 3, stage3: 1}\n"
        "trainer: {enable_progress_bar: false, enable_model_summary: false}\n"
    )
    return override


def test_cli_single_stage_without_predecessor_is_one_line(tmp_path, capsys):
    from itkm_lightning.command import main

    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(REPO / "conf/smoke.yaml"), "--config", str(_fake_stages_config(tmp_path)),
              "--run_dir", str(tmp_path / "run"), "--stage", "2"])
    assert exit_info.value.code == 2
    first = capsys.readouterr().err.strip().splitlines()[0]
    assert first.startswith("itkm: error: stage2 needs the hand-over of stage1")
    assert f"--run_dir {tmp_path / 'run'} --stage stage1` first" in first
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_cli_runs_three_stages_and_resumes_a_crashed_one(tmp_path, synthetic_root, capsys):
    """Real Stage I, stand-in Stages II and III (tests/fake_stages.py) through `itkm fit`."""
    from itkm_lightning.command import main

    run_dir = tmp_path / "run"
    args = ["fit", "--config", str(REPO / "conf/smoke.yaml"), "--data.root", str(synthetic_root),
            "--run_dir", str(run_dir)]
    with pytest.raises(RuntimeError, match="simulated crash at epoch 1"):
        main([*args, "--config", str(_fake_stages_config(tmp_path, crash_at_epoch=1))])
    assert handoff_path(run_dir, "stage1").is_file() and not handoff_path(run_dir, "stage2").exists()
    stage1_ckpt = (run_dir / "stage1" / "checkpoints" / "last.ckpt").stat().st_mtime_ns

    # The fixed config is another setting (crash_at_epoch), so continuing this run directory must be asked for.
    main([*args, "--config", str(_fake_stages_config(tmp_path)), "--resume_anyway"])
    assert (run_dir / "stage1" / "checkpoints" / "last.ckpt").stat().st_mtime_ns == stage1_ckpt  # not retrained
    stage1 = load_handoff(handoff_path(run_dir, "stage1"))
    stage2 = load_handoff(handoff_path(run_dir, "stage2"))
    assert stage2["epochs_run"] == [1, 2]  # epoch 0 came from the checkpoint
    assert torch.equal(stage2["labels"], stage1["labels"])
    assert stage2["text_features"].shape[0] == int(stage1["labels"].max()) + 1
    assert load_handoff(handoff_path(run_dir, "stage3"))["stage"] == "stage3"
    results = json.loads((run_dir / "results.json").read_text())
    assert list(results) == ["raw_pixels", "untrained", "stage1", "stage2_text", "stage3"]
    assert results["stage2_text"] == {"num_clusters": int(stage1["labels"].max()) + 1}
    for name in ("stage1", "stage3"):
        assert set(results[name]) == {"synthetic_vi", "synthetic_cr", "synthetic_cc"}
        assert "val/synthetic_vi/mAP" in (run_dir / name / "logs" / "metrics.csv").read_text()
    assert "stage3" in capsys.readouterr().out  # the printed table
