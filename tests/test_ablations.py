"""The ablation overlays in conf/ablations set knobs that exist, to the values their names promise."""

from pathlib import Path

import pytest
import yaml

from itkm_lightning.command import main

REPO = Path(__file__).resolve().parents[1]
OVERLAYS = sorted((REPO / "conf" / "ablations").glob("*.yaml"))
EXPECTED = {
    "no_dru": ("stage3", {"dru": False}),
    "no_chm": ("stage3", {"chm": False}),
    "no_ihm": ("stage3", {"ihm": False}),
    "no_separation": ("stage2", {"separation": False}),
    "no_scenario_embedding": ("model", {"backbone": {"scenario_embedding": "none"}}),
    "no_dual_branch": ("model", {"backbone": {"dual_branch": False}}),
}


def test_every_overlay_is_known():
    assert {p.stem for p in OVERLAYS} == set(EXPECTED)


@pytest.mark.parametrize("overlay", OVERLAYS, ids=[p.stem for p in OVERLAYS])
def test_overlay_sets_what_its_name_says(overlay, tiny_backbone):
    section, values = EXPECTED[overlay.stem]
    assert yaml.safe_load(overlay.read_text()) == {section: values}
    if section in ("stage2", "stage3"):
        from itkm_lightning.stages.stage2 import Stage2
        from itkm_lightning.stages.stage3 import Stage3

        module_class = Stage2 if section == "stage2" else Stage3
        model = module_class(backbone=tiny_backbone, **values)  # the keys are that stage's arguments
        for key, value in values.items():
            assert model.hparams[key] == value


@pytest.mark.parametrize("name", ["no_scenario_embedding", "no_dual_branch"])
def test_backbone_overlays_compose_with_a_config(name, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(REPO / "conf/smoke.yaml"), "--config",
              str(REPO / "conf/ablations" / f"{name}.yaml"), "--print_config"])
    assert exit_info.value.code in (0, None)
    out = capsys.readouterr().out
    key, value = next(iter(EXPECTED[name][1]["backbone"].items()))
    assert f"{key}: {str(value).lower() if isinstance(value, bool) else value}" in out
