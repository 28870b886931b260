"""params.yaml: every preset, variant and grid it names is valid."""

import re

import pytest
import torch

from repro.analysis.claims import CLAIMS
from repro.config import load_params, model_variant, scale_preset
from repro.data.registry import list_datasets
from repro.models import create_model, create_variant, list_models, model_options, model_spatial_dims
from repro.runner.grid import Grid

PARAMS = load_params()


@pytest.mark.parametrize("name", sorted(PARAMS["scales"]))
def test_scale_presets_load(name):
    preset = scale_preset(name, PARAMS)
    assert preset.image_size % 32 == 0 and preset.patch_size % 32 == 0, "every network must take the input size"


def test_unknown_names_list_the_valid_ones():
    """The message lists every scale (variant) params.yaml defines, whatever they are: none is named here, so adding
    a scale or a variant leaves this test as it is."""
    scales, variants = (re.escape(", ".join(PARAMS[section])) for section in ("scales", "models"))
    with pytest.raises(ValueError, match=f"^unknown scale 'fast'; params.yaml defines: {scales}$"):
        scale_preset("fast", PARAMS)
    with pytest.raises(ValueError, match=f"^unknown model variant 'unet3p'; params.yaml defines: {variants}$"):
        model_variant("unet3p", PARAMS)


@pytest.mark.parametrize("name", sorted(PARAMS["models"]))
def test_every_variant_names_a_registered_arch_and_valid_options(name):
    variant = model_variant(name, PARAMS)
    assert variant.arch in list_models()
    assert set(variant.options) <= set(model_options(variant.arch))
    in_channels = 3 if model_spatial_dims(variant.arch) == 2 else 1  # the volumes are single-channel MRI
    create_variant(variant.arch, variant.options, width_mult=0.25, in_channels=in_channels, num_classes=2)


def test_a_variant_is_built_at_the_scales_width_unless_it_fixes_its_own_with_one_output_for_two_classes():
    """``create_variant``, the one rule of training, prediction, the runner's estimate and the benchmarks: the
    scale's ``width_mult`` unless the variant sets one (``unet`` takes it, ``unet_w1`` keeps its 1.0), one output
    channel (sigmoid) for two classes and one per class otherwise, drawing its initialisation as ``create_model``
    does."""
    for name, width, classes, outputs in (("unet", 0.25, 2, 1), ("unet_w1", 1.0, 2, 1), ("unet", 0.25, 4, 4)):
        variant = model_variant(name, PARAMS)
        torch.manual_seed(0)
        built = create_variant(variant.arch, variant.options, width_mult=0.25, in_channels=3, num_classes=classes)
        torch.manual_seed(0)
        expected = create_model(variant.arch, in_channels=3, num_classes=outputs, width_mult=width)
        weights, expected = built.state_dict(), expected.state_dict()
        assert list(weights) == list(expected) and all(torch.equal(weights[k], expected[k]) for k in weights), name
        assert built.eval()(torch.zeros(1, 3, 32, 32)).shape == (1, outputs, 32, 32)


def _blocks(grid: dict) -> list[tuple[list, list]]:
    """A grid's (datasets, models) blocks: the image study, its extra rows, ablations, controls, volumetric rows, and
    the universal models and their independent models (over their domains), where it has them."""
    blocks = [(grid["datasets"], grid["models"])] if "models" in grid else []
    for rows in ("extra", "ablations", "controls", "volumes"):
        if "datasets" in grid.get(rows, {}):
            blocks.append((grid[rows]["datasets"], grid[rows]["models"]))
    if "domains" in grid.get("universal", {}):
        for models in ("models", "independent"):
            blocks.append((grid["universal"]["domains"], grid["universal"][models]))
    return blocks


def test_grids_name_known_datasets_and_variants():
    # A user's own dataset is prepared by its own stage (prepare_custom@<name>), not listed in prepare.datasets.
    prepared = set(PARAMS["prepare"]["datasets"]) | set(PARAMS["prepare"].get("custom_datasets") or {})
    assert set(PARAMS["prepare"]["datasets"]) <= set(list_datasets())
    for grid in [PARAMS["study"], *PARAMS["grids"].values()]:
        for datasets, models in _blocks(grid):
            assert set(datasets) <= prepared
            assert set(models) <= set(PARAMS["models"])
    full = PARAMS["grids"]["full"]
    # Every 2D variant but the UNet++ paper's own networks, which serve the DSB2018 sensitivity study only.
    planar = {name for name in PARAMS["models"] if model_spatial_dims(model_variant(name, PARAMS).arch) == 2}
    assert set(full["models"]) == {name for name in planar if not name.endswith("_2018")}
    assert set(full["datasets"]) == {
        "dsb2018-nuclei-96",
        "kvasir-seg",
        "ph2-dermoscopy",
        "isbi2012-em-membrane",
        "covid19-ct-medseg-infnet",
        "drive",
    }


def test_the_claim_grids_hold_every_variant_a_claim_needs():
    """`grids.claims` holds every 2D variant of the claims on the default study's datasets (all but the DSB2018
    sensitivity study's) and `grids.volumes` every volumetric network of C10-C15 but nnU-Net (its own stage): C10,
    C13 and C14's on Hippocampus, C15's universal model and its independent model on both of its domains; the study
    itself is the part of `grids.claims` the CPU budget covers, C1 and C2 first."""
    needed = {
        name
        for claim in CLAIMS
        if claim.sensitivity_of is None
        for comparison in claim.comparisons
        for name in (comparison.better, comparison.baseline)
    } - {"nnunet"}
    claims, volumes = PARAMS["grids"]["claims"], PARAMS["grids"]["volumes"]["volumes"]
    universal = PARAMS["grids"]["volumes"]["universal"]
    grids = set(claims["models"]) | set(claims["ablations"]["models"]) | set(volumes["models"])
    assert grids | set(universal["models"]) | set(universal["independent"]) >= needed
    assert volumes["datasets"] == ["msd-task04-hippocampus"]
    assert universal["domains"] == ["msd-task04-hippocampus", "la2018-atrium-lgemri"]
    assert universal["models"] == ["u2net3d_universal"] and universal["independent"] == ["u2net3d"]
    study = PARAMS["study"]
    assert study["datasets"] == claims["datasets"] and study["seeds"] == claims["seeds"] == [0, 1, 2, 3, 4]
    assert set(study["models"]) <= set(claims["models"]) and study["models"][:3] == ["unet", "unetpp", "wide_unet"]
    assert study["volumes"]["datasets"] == volumes["datasets"] and study["ablations"] == claims["ablations"]
    assert study["universal"]["domains"] == universal["domains"]


def test_the_controls_block_trains_c4a_s_control_where_its_partner_trains():
    """study.controls is C4a's block: its control network (TinyU-Net with plain blocks) on COVID-19 CT and PH2, the
    two cheapest datasets, where TinyU-Net itself trains in another block (study.ablations on CT, study.models on
    PH2), so that each control run has its partner of the same dataset and seed."""
    (c4a,) = [claim for claim in CLAIMS if claim.id == "C4a"]
    (comparison,) = c4a.comparisons
    study = PARAMS["study"]
    assert study["controls"]["datasets"] == ["covid19-ct-medseg-infnet", "ph2-dermoscopy"]
    assert study["controls"]["models"] == [comparison.baseline]
    assert model_variant(comparison.baseline, PARAMS).options["block"] == "double_conv"
    runs = {run[1:] for run in Grid.from_params(PARAMS).runs()}
    assert {
        (dataset, comparison.better, seed) for dataset in study["controls"]["datasets"] for seed in study["seeds"]
    } <= runs


def test_a_dataset_may_set_its_own_batch_size_per_scale():
    """Volumes train on smaller batches than the scale's; a dataset that sets none keeps the preset's, and its
    recorded settings (a run's identity) stay what they were before the key existed."""
    from repro.config import dataset_training

    params = load_params()
    cpu, smoke = scale_preset("cpu", params), scale_preset("smoke", params)
    params["training"]["msd-task04-hippocampus"] = {"train_steps": {}, "eval_every": 1, "batch_size": {"cpu": 4}}
    volumes = dataset_training("msd-task04-hippocampus", params)
    assert (volumes.batch(cpu), volumes.batch(smoke)) == (4, smoke.batch_size)
    assert volumes.settings()["batch_size"] == {"cpu": 4}
    images = dataset_training("ph2-dermoscopy", params)
    assert images.batch(cpu) == cpu.batch_size
    assert images.settings() == {"train_steps": {"cpu": 480}, "eval_every": 1}
    params["training"]["msd-task04-hippocampus"]["batch_size"] = {"cpu": 0}
    with pytest.raises(ValueError, match=r"training.msd-task04-hippocampus .*batch_size must map scales"):
        dataset_training("msd-task04-hippocampus", params)
