"""The volumetric models (MSD Hippocampus): the shared checks of tests/test_models.py on small volumes, then the
3D U-Net's parameter count, the 2D U-Net kept as it was, the slice-by-slice U-Net, and SegResNet-VAE's loss.

Checks run on 16x16x16 and 16x32x16 volumes at small widths (V-Net has fixed widths: full width), to stay fast on
a CPU.
"""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch
from torch import nn

from repro.complexity import count_parameters
from repro.models import create_model, list_models, model_options, model_spatial_dims
from repro.models.blocks import check_input_size, init_keras2018, keras_l2_parameters
from repro.models.monai_nets import VAE_LOSS_WEIGHT
from repro.models.unet import UNet

IN_CHANNELS = 1
NUM_CLASSES = 3
VAE_SIZE = (16, 16, 16)
# Small options per volumetric arch.
SMALL = {
    "unet3d": {"width_mult": 0.125},
    "unet2d_slices": {"width_mult": 0.125},
    "vnet": {},
    "segresnet": {"width_mult": 0.25},
    "segresnet_vae": {"width_mult": 0.25, "input_image_size": VAE_SIZE},
    "u2net3d": {"width_mult": 0.25, "levels": 4},
}
VOLUME_ARCHS = sorted(SMALL)
SIZES = [(16, 16, 16), (16, 32, 16)]

pytestmark = pytest.mark.usefixtures("single_thread")


def small_model(arch: str, **options) -> nn.Module:
    torch.manual_seed(0)
    return create_model(arch, in_channels=IN_CHANNELS, num_classes=NUM_CLASSES, **{**SMALL[arch], **options})


def sizes_of(arch: str) -> list[tuple[int, int, int]]:
    return [VAE_SIZE] if arch == "segresnet_vae" else SIZES


def test_every_volumetric_arch_is_checked():
    assert VOLUME_ARCHS == [arch for arch in list_models() if model_spatial_dims(arch) == 3]


# --- the shared checks -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", VOLUME_ARCHS)
def test_a_train_step_in_the_memory_format_the_trainer_gives_it(arch):
    """The trainer runs a network channels-last unless its contract says it cannot (SegResNet-VAE's MONAI code
    flattens with .view); every volumetric network takes a train step in the format it gets."""
    # 32^3 for SegResNet-VAE: at 16^3 its VAE features are small enough to flatten whatever their layout.
    size = (32, 32, 32) if arch == "segresnet_vae" else sizes_of(arch)[0]
    model = small_model(arch, **({"input_image_size": size} if arch == "segresnet_vae" else {})).train()
    memory_format = torch.channels_last_3d if model.channels_last else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    # Stored channels-last, as the prepared volumes are: with one channel that also counts as contiguous.
    x = torch.randn(2, *size, IN_CHANNELS).permute(0, 4, 1, 2, 3).contiguous(memory_format=memory_format)
    out = model(x)
    outputs = out if isinstance(out, list) else [out]
    loss = sum(o.float().mean() for o in outputs) + (model.auxiliary_loss if model.auxiliary_loss is not None else 0)
    loss.backward()
    assert torch.isfinite(loss)


@pytest.mark.parametrize("arch", VOLUME_ARCHS)
def test_forward_shapes_and_finite(arch):
    model = small_model(arch)
    for size in sizes_of(arch):
        x = torch.randn(2, IN_CHANNELS, *size)
        outputs = [model.train()(x)]
        with torch.no_grad():
            outputs.append(model.eval()(x))
        for output in outputs:
            assert output.shape == (2, NUM_CLASSES, *size)
            assert torch.isfinite(output).all()


@pytest.mark.parametrize("arch", VOLUME_ARCHS)
def test_backward_reaches_every_parameter(arch):
    model = small_model(arch).train()
    loss = model(torch.randn(2, IN_CHANNELS, *sizes_of(arch)[0])).square().mean()
    if arch == "segresnet_vae":
        loss = loss + model.auxiliary_loss
    loss.backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None, f"{name} receives no gradient"
        assert torch.isfinite(parameter.grad).all(), name


@pytest.mark.parametrize("arch", VOLUME_ARCHS)
def test_eval_mode_is_deterministic(arch):
    model = small_model(arch).eval()
    x = torch.randn(1, IN_CHANNELS, *sizes_of(arch)[0])
    with torch.no_grad():
        assert torch.equal(model(x), model(x))


@pytest.mark.parametrize("arch", VOLUME_ARCHS)
def test_bad_input_size_is_a_clear_error(arch):
    model = small_model(arch).eval()
    if arch == "segresnet_vae":
        with pytest.raises(ValueError, match="input_image_size"):
            model(torch.randn(1, IN_CHANNELS, 32, 16, 16))
        return
    bad = 3 * model.size_divisor // 2
    with pytest.raises(ValueError, match=f"multiples of {model.size_divisor}"):
        model(torch.randn(1, IN_CHANNELS, 16, bad, bad))


@pytest.mark.parametrize("arch", VOLUME_ARCHS)
def test_unknown_option_lists_valid_options(arch):
    with pytest.raises(ValueError, match="valid options") as error:
        create_model(arch, in_channels=1, num_classes=1, no_such_option=1)
    assert all(option in str(error.value) for option in model_options(arch))


@pytest.mark.parametrize(
    ("arch", "options"),
    [
        ("unet3d", {"block": "cmrf"}),  # CMRF is 2D only
        ("unet3d", {"filters": (32, 64, 128, 256, 512)}),  # five widths for four levels
        ("unet3d", {"levels": 1}),
        ("unet", {"spatial_dims": 4}),
        ("vnet", {"width_mult": 0.5}),
        ("segresnet_vae", {"input_image_size": (48, 64)}),
        ("segresnet_vae", {"input_image_size": (48, 60, 48)}),  # not a multiple of 16
    ],
)
def test_invalid_option_values_raise(arch, options):
    with pytest.raises(ValueError):
        create_model(arch, in_channels=1, num_classes=3, **options)


def test_vnet_in_channels_must_divide_16():
    with pytest.raises(ValueError, match="divide 16"):
        create_model("vnet", in_channels=3, num_classes=3)


def test_check_input_size_over_depth_height_and_width():
    check_input_size(torch.zeros(1, 1, 16, 32, 48), 16, "net", spatial_dims=3)
    with pytest.raises(ValueError, match="depth, height and width are multiples of 16.*got 8x32x48"):
        check_input_size(torch.zeros(1, 1, 8, 32, 48), 16, "net", spatial_dims=3)
    # 2D checks look at the last two dimensions only, as before.
    check_input_size(torch.zeros(1, 1, 8, 32, 48), 16, "net")


def test_models_import_neither_monai_nor_torchvision():
    code = "import sys, repro.models; print('monai' in sys.modules, 'torchvision' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.split() == ["False", "False"]


# --- 3D U-Net: the 2D U-Net's module with 3D layers ------------------------------------------------------------


def conv3d_params(c_in: int, c_out: int, kernel: int = 3) -> int:
    return c_in * c_out * kernel**3 + c_out


def unet3d_params(filters, in_channels, num_classes, batch_norm):
    """Nodes of two 3x3x3 convolutions (+ BatchNorm), 2x2x2 up-convolutions to the target width, 1x1x1 head."""

    def node(c_in, c_out):
        return conv3d_params(c_in, c_out) + conv3d_params(c_out, c_out) + (4 * c_out if batch_norm else 0)

    encoder = sum(node(c_in, c_out) for c_in, c_out in zip((in_channels, *filters[:-1]), filters, strict=True))
    decoder = sum(
        conv3d_params(filters[i + 1], filters[i], kernel=2) + node(2 * filters[i], filters[i])
        for i in range(len(filters) - 1)
    )
    return encoder + decoder + conv3d_params(filters[0], num_classes, kernel=1)


@pytest.mark.parametrize(("norm", "expected"), [("batch", 22_399_555), (None, 22_393_923)])
def test_unet3d_parameter_count(norm, expected):
    model = create_model("unet3d", in_channels=1, num_classes=3, norm=norm)
    assert model.widths == (64, 128, 256, 512) and model.size_divisor == 8
    assert count_parameters(model) == expected == unet3d_params((64, 128, 256, 512), 1, 3, norm == "batch")


def test_unet3d_is_the_unet_module_with_3d_layers():
    volumetric = create_model("unet3d", in_channels=1, num_classes=3)
    planar = create_model("unet", in_channels=1, num_classes=3, levels=4, filters=(64, 128, 256, 512))
    shapes_3d = {name: tuple(t.shape) for name, t in volumetric.state_dict().items()}
    shapes_2d = {name: tuple(t.shape) for name, t in planar.state_dict().items()}
    assert shapes_3d.keys() == shapes_2d.keys()
    for name, shape in shapes_2d.items():
        # Kernels gain a third spatial dimension equal to the others; everything else is unchanged.
        assert shapes_3d[name] == (shape + shape[-1:] if len(shape) == 4 else shape), name
    kinds = {type(m) for m in volumetric.modules()}
    assert {nn.Conv3d, nn.ConvTranspose3d, nn.BatchNorm3d, nn.MaxPool3d} <= kinds
    assert not kinds & {nn.Conv2d, nn.ConvTranspose2d, nn.BatchNorm2d, nn.MaxPool2d}


def unet2d_state_dict_keys(levels: int = 5) -> set[str]:
    """The 2D U-Net's parameter and buffer names, written out from its structure."""
    conv = ("weight", "bias")
    batch_norm = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")

    def node(prefix):
        return {f"{prefix}.{c}.0.{p}" for c in (0, 1) for p in conv} | {
            f"{prefix}.{c}.1.{p}" for c in (0, 1) for p in batch_norm
        }

    keys = set().union(*(node(f"encoder.{level}") for level in range(levels)))
    for k in range(levels - 1):
        keys |= node(f"decoder.{k}.block") | {f"decoder.{k}.up.{p}" for p in conv}
    return keys | {f"head.{p}" for p in conv}


def test_unet_2d_is_unchanged():
    default = create_model("unet", in_channels=1, num_classes=1)
    explicit = create_model("unet", in_channels=1, num_classes=1, spatial_dims=2, levels=5)
    assert default.state_dict().keys() == explicit.state_dict().keys() == unet2d_state_dict_keys()
    # The official count (tests/test_models.py) plus BatchNorm's 2 per convolution output channel.
    assert count_parameters(explicit) == 7_759_521 + 2 * (2 * 2 * (32 + 64 + 128 + 256) + 2 * 512)
    assert count_parameters(create_model("unet", in_channels=1, num_classes=1, norm=None)) == 7_759_521
    assert default.size_divisor == 16 and default.spatial_dims == 2


def test_keras2018_helpers_handle_3d_convolutions():
    torch.manual_seed(0)
    model = init_keras2018(UNet(1, 3, filters=(16, 32, 64, 128), levels=4, spatial_dims=3, norm=None))
    kernels = keras_l2_parameters(model)
    assert len(kernels) == 2 * 7 + 1  # two convolutions in each of 7 nodes, and the head
    assert all(k.ndim == 5 for k in kernels)
    conv = model.encoder[3][1][0]  # 128 -> 128, 3x3x3: fan_in 3456
    assert conv.weight.std().item() == pytest.approx(math.sqrt(2 / (128 * 27)), rel=0.02)
    up = model.decoder[0].up
    assert isinstance(up, nn.ConvTranspose3d) and not up.bias.any()
    assert up.weight.abs().max().item() <= math.sqrt(6 / ((128 + 64) * 8))


# --- the 2D U-Net slice by slice ---------------------------------------------------------------------------------


def test_unet2d_slices_runs_the_2d_unet_on_every_slice():
    model = small_model("unet2d_slices").eval()
    x = torch.randn(2, IN_CHANNELS, 5, 32, 16)  # any depth
    with torch.no_grad():
        per_slice = torch.stack([model.unet(x[:, :, d]) for d in range(x.shape[2])], dim=2)
        torch.testing.assert_close(model(x), per_slice, rtol=0, atol=0)


def test_unet2d_slices_has_the_2d_unet_parameters():
    torch.manual_seed(0)
    planar = create_model("unet", in_channels=1, num_classes=3, width_mult=0.125)
    slicewise = small_model("unet2d_slices")
    assert {f"unet.{k}" for k in planar.state_dict()} == slicewise.state_dict().keys()
    assert set(model_options("unet2d_slices")) == set(model_options("unet")) - {"spatial_dims"}
    with pytest.raises(ValueError, match=r"\(N, C, D, H, W\)"):
        slicewise(torch.randn(1, 1, 32, 32))


# --- MONAI networks ------------------------------------------------------------------------------------------------


def test_segresnet_vae_exposes_its_vae_loss():
    model = small_model("segresnet_vae")
    x = torch.randn(2, IN_CHANNELS, *VAE_SIZE)
    assert model.auxiliary_loss is None
    model.train()(x)
    loss = model.auxiliary_loss
    assert loss.ndim == 0 and torch.isfinite(loss) and loss.requires_grad and loss > 0
    # It is MONAI's VAE loss weighted as in the paper (the VAE draws its noise from torch's generator).
    torch.manual_seed(0)
    _, vae_loss = model.net(x)
    torch.manual_seed(0)
    model(x)
    torch.testing.assert_close(model.auxiliary_loss, VAE_LOSS_WEIGHT * vae_loss)
    with torch.no_grad():
        model.eval()(x)
    assert model.auxiliary_loss is None


def test_segresnet_width_mult_scales_the_initial_filters():
    assert [small_model("segresnet", width_mult=w).net.init_filters for w in (0.25, 0.5, 1.0)] == [8, 16, 32]
    assert small_model("segresnet_vae").net.init_filters == 8
