"""FCN-8s and MultiResUNet: parameter counts derived by hand from the official layer definitions, FCN's score
strides and bilinear upsamplers, MultiResUNet's block widths and Res paths, and ``width_mult`` scaling.

The shared forward/backward/size checks of both run in ``test_models.py`` (they are registered models).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from repro.complexity import count_parameters
from repro.models import create_model
from repro.models.fcn import BilinearUpsample, bilinear_kernel
from repro.models.multiresunet import ShiftBatchNorm

pytestmark = pytest.mark.usefixtures("single_thread")


def conv_params(c_in: int, c_out: int, kernel: int = 3, bias: bool = True) -> int:
    return c_in * c_out * kernel * kernel + (c_out if bias else 0)


# --- MultiResUNet ----------------------------------------------------------------------------------------------


def keras_multiresunet_params(
    in_channels: int, num_classes: int, widths=(32, 64, 128, 256, 512), alpha: float = 1.67
) -> tuple[int, int]:
    """(trainable, total) parameters of the official Keras model, from its layer definitions.

    ``conv2d_bn``: Conv2D without bias + BatchNormalization(scale=False) (a trainable beta; moving mean and
    variance are non-trainable). The BatchNorms after the concatenation and after each residual sum have gamma
    and beta. Conv2DTranspose 2x2 has a bias.
    """
    trainable = statistics = 0

    def conv_bn(c_in, c_out, kernel):
        nonlocal trainable, statistics
        trainable += conv_params(c_in, c_out, kernel, bias=False) + c_out
        statistics += 2 * c_out

    def batch_norm(channels):
        nonlocal trainable, statistics
        trainable += 2 * channels
        statistics += 2 * channels

    def multires_block(c_in, width):
        w = alpha * width
        splits = [int(w * 0.167), int(w * 0.333), int(w * 0.5)]
        out = sum(splits)
        conv_bn(c_in, out, 1)
        for a, b in zip([c_in, *splits[:-1]], splits, strict=True):
            conv_bn(a, b, 3)
        batch_norm(out)
        batch_norm(out)
        return out

    def res_path(c_in, width, length):
        for _ in range(length):
            conv_bn(c_in, width, 1)
            conv_bn(c_in, width, 3)
            batch_norm(width)
            c_in = width

    channels = in_channels
    for level, width in enumerate(widths):
        channels = multires_block(channels, width)
        if level < 4:
            res_path(channels, width, 4 - level)
    for level in reversed(range(4)):
        trainable += conv_params(channels, widths[level], kernel=2)
        channels = multires_block(2 * widths[level], widths[level])
    conv_bn(channels, num_classes, 1)
    return trainable, trainable + statistics


def running_statistics(model: nn.Module) -> int:
    return sum(b.numel() for name, b in model.named_buffers() if name.endswith(("running_mean", "running_var")))


def test_multiresunet_matches_the_official_keras_count():
    model = create_model("multiresunet", in_channels=3, num_classes=1)
    trainable, total = keras_multiresunet_params(3, 1)
    # Keras's model.summary() of MultiResUnet(256, 256, 3): Total 7,262,750 (the paper's 7.26M), of which the
    # BatchNorm moving statistics are non-trainable; PyTorch keeps those as buffers.
    assert (trainable, total) == (7_238_228, 7_262_750)
    assert count_parameters(model) == trainable
    assert count_parameters(model) + running_statistics(model) == total


@pytest.mark.parametrize(
    ("options", "widths", "alpha"),
    [
        ({"width_mult": 0.5}, (16, 32, 64, 128, 256), 1.67),
        ({"width_mult": 0.25}, (8, 16, 32, 64, 128), 1.67),
        ({"alpha": 1.0}, (32, 64, 128, 256, 512), 1.0),
    ],
)
def test_multiresunet_scaled_counts(options, widths, alpha):
    model = create_model("multiresunet", in_channels=1, num_classes=2, **options)
    assert model.widths == widths
    trainable, total = keras_multiresunet_params(1, 2, widths, alpha)
    assert count_parameters(model) == trainable
    assert count_parameters(model) + running_statistics(model) == total


def test_multiresunet_structure():
    model = create_model("multiresunet", in_channels=3, num_classes=1)
    assert [block.out_channels for block in model.encoder] == [51, 105, 212, 426, 853]
    assert [len(path) for path in model.res_paths] == [4, 3, 2, 1]
    assert [node.block.out_channels for node in model.decoder] == [426, 212, 105, 51]
    for node, width in zip(model.decoder, (256, 128, 64, 32), strict=True):
        assert node.up.kernel_size == (2, 2) and node.up.stride == (2, 2)
        assert node.up.bias is not None and node.up.out_channels == width
    assert all(conv.bias is None for conv in model.modules() if type(conv) is nn.Conv2d)
    # conv2d_bn's BatchNorm has a shift but no scale; the block and Res path BatchNorms have both.
    shift_only = [m for m in model.modules() if isinstance(m, ShiftBatchNorm)]
    assert shift_only and all(m.weight is None and m.shift.shape == (m.num_features,) for m in shift_only)
    assert model.encoder[0].out_norm.weight is not None


def test_multiresunet_rejects_empty_blocks_and_bad_alpha():
    with pytest.raises(ValueError, match="empty convolution"):
        create_model("multiresunet", in_channels=3, num_classes=1, width_mult=0.05)
    with pytest.raises(ValueError, match="alpha"):
        create_model("multiresunet", in_channels=3, num_classes=1, alpha=0.0)


# --- FCN-8s ----------------------------------------------------------------------------------------------------


def fcn_params(in_channels, num_classes, widths=(32, 64, 128, 256, 512), fc=1024, norm=True, learned=True):
    """Encoder double convolutions, fc6 (3x3) and fc7 (1x1), three 1x1 score layers, three bias-free upsamplers."""
    bn = 2 if norm else 0
    total = 0
    for c_in, c_out in zip([in_channels, *widths[:-1]], widths, strict=True):
        total += conv_params(c_in, c_out) + conv_params(c_out, c_out) + 2 * bn * c_out
    total += conv_params(widths[-1], fc) + conv_params(fc, fc, kernel=1) + 2 * bn * fc
    total += sum(conv_params(c, num_classes, kernel=1) for c in (fc, widths[4], widths[3]))
    if learned:
        total += 2 * num_classes**2 * 4**2 + num_classes**2 * 16**2
    return total


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({}, fcn_params(3, 2)),
        ({"norm": None}, fcn_params(3, 2, norm=False)),
        ({"learn_upsampling": False}, fcn_params(3, 2, learned=False)),
        ({"width_mult": 0.5}, fcn_params(3, 2, (16, 32, 64, 128, 256), 512)),
    ],
)
def test_fcn_parameter_count(options, expected):
    assert count_parameters(create_model("fcn", in_channels=3, num_classes=2, **options)) == expected


def test_fcn_score_layers_sit_at_strides_32_16_8():
    model = create_model("fcn", in_channels=3, num_classes=2, width_mult=0.25).eval()
    shapes = {}
    for name in ("score32", "score16", "score8"):
        getattr(model, name).register_forward_hook(lambda _m, _i, out, name=name: shapes.__setitem__(name, out.shape))
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 96)).shape == (1, 2, 64, 96)
    assert shapes == {f"score{s}": (1, 2, 64 // s, 96 // s) for s in (32, 16, 8)}
    assert model.score8.in_channels == model.widths[3] and model.score16.in_channels == model.widths[4]
    assert model.score32.in_channels == model.widths[5]


def test_bilinear_kernel_is_fcns():
    torch.testing.assert_close(bilinear_kernel(4)[0], torch.tensor([0.0625, 0.1875, 0.1875, 0.0625]))
    assert bilinear_kernel(16).sum() == 64  # a x8 kernel spreads each input over 8 x 8 outputs


@pytest.mark.parametrize("learnable", [True, False])
def test_fcn_upsamplers_start_as_bilinear_interpolation(learnable):
    model = create_model("fcn", in_channels=3, num_classes=3, learn_upsampling=learnable)
    for name, scale in (("up32to16", 2), ("up16to8", 2), ("up8to1", 8)):
        upsample = getattr(model, name)
        weight = upsample.weight
        assert isinstance(weight, nn.Parameter) is learnable
        assert (name + ".weight" in dict(model.named_buffers())) is not learnable
        for i in range(3):
            for j in range(3):
                expected = bilinear_kernel(2 * scale) if i == j else torch.zeros(2 * scale, 2 * scale)
                torch.testing.assert_close(weight[i, j], expected)
        scores = torch.randn(2, 3, 6, 5)
        with torch.no_grad():
            out = upsample(scores)
        reference = F.interpolate(scores, scale_factor=scale, mode="bilinear", align_corners=False)
        assert out.shape == reference.shape
        # Equal away from the border, where the transposed convolution sees zero padding.
        torch.testing.assert_close(out[..., scale:-scale, scale:-scale], reference[..., scale:-scale, scale:-scale])


def test_bilinear_upsample_rejects_odd_scales():
    with pytest.raises(ValueError, match="even"):
        BilinearUpsample(2, 3)


def test_fcn_width_mult_scales_every_width():
    assert create_model("fcn", in_channels=3, num_classes=1).widths == (32, 64, 128, 256, 512, 1024)
    assert create_model("fcn", in_channels=3, num_classes=1, width_mult=0.5).widths == (16, 32, 64, 128, 256, 512)
