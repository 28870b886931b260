"""params.yaml: every preset, variant and grid it names is valid."""

import pytest

from repro.config import load_params, model_variant, scale_preset
from repro.data.registry import list_datasets
from repro.models import create_model, list_models, model_options, model_spatial_dims

PARAMS = load_params()


@pytest.mark.parametrize("name", sorted(PARAMS["scales"]))
def test_scale_presets_load(name):
    preset = scale_preset(name, PARAMS)
    assert preset.image_size % 32 == 0 and preset.patch_size % 32 == 0, "every network must take the input size"


def test_unknown_names_list_the_valid_ones():
    with pytest.raises(ValueError, match="params.yaml defines: smoke, cpu, paper"):
        scale_preset("fast", PARAMS)
    with pytest.raises(ValueError, match="defines: unet, wide_unet"):
        model_variant("unet3p", PARAMS)


@pytest.mark.parametrize("name", sorted(PARAMS["models"]))
def test_every_variant_names_a_registered_arch_and_valid_options(name):
    variant = model_variant(name, PARAMS)
    assert variant.arch in list_models()
    assert set(variant.options) <= set(model_options(variant.arch))
    in_channels = 3 if model_spatial_dims(variant.arch) == 2 else 1  # the volumes are single-channel MRI
    create_model(variant.arch, in_channels=in_channels, num_classes=1, **{"width_mult": 0.25, **variant.options})


def test_grids_name_known_datasets_and_variants():
    for grid in [PARAMS["study"], *PARAMS["grids"].values()]:
        # A user's own dataset is prepared by its own stage (prepare_custom@<name>), not listed in prepare.datasets.
        prepared = set(PARAMS["prepare"]["datasets"]) | set(PARAMS["prepare"].get("custom_datasets") or {})
        assert set(grid["datasets"]) <= prepared
        assert set(PARAMS["prepare"]["datasets"]) <= set(list_datasets())
        assert set(grid["models"]) <= set(PARAMS["models"])
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


def test_default_study_grid():
    study = PARAMS["study"]
    assert PARAMS["scale"] == "cpu" and study["seeds"] == [0, 1, 2, 3, 4]
    assert {"dsb2018-nuclei-96", "kvasir-seg", "ph2-dermoscopy"} <= set(study["datasets"])
    assert {"unet", "wide_unet", "unetpp", "tinyunet", "tinyunet_plain", "unetv2", "unetv2_nosdi"} <= set(
        study["models"]
    )
