"""Every registered architecture (and its key options) gets the same forward/backward/NaN/size checks; then the
exact parameter counts of the official configurations, deep supervision, CMRF and SDI.

Forward and backward checks run at ``width_mult=0.25`` on 32x32 and 64x32 inputs, to stay fast on a CPU.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from repro.complexity import count_flops, count_parameters
from repro.models import _spec, create_model, list_models, model_options, model_spatial_dims
from repro.models.blocks import scale_width
from repro.models.cmrf import CMRF
from repro.models.contract import SegmentationNetwork
from repro.models.sdi import SDI, SkipProjection

SMALL = {"width_mult": 0.25}
IN_CHANNELS = 3
NUM_CLASSES = 2
# This suite is 2D; the volumetric models have theirs in tests/test_models_3d.py.
ARCHS_2D = [arch for arch in list_models() if model_spatial_dims(arch) == 2]

# (arch, options): every registered name with its defaults, plus the ablation and deep-supervision options.
VARIANTS = [(arch, {}) for arch in ARCHS_2D] + [
    ("unet", {"norm": None, "dropout": 0.5}),
    ("unet", {"block": "cmrf"}),
    ("wide_unet", {"block": "cmrf", "n_dwconv": 4}),
    ("unet_plus", {"deep_supervision": True}),
    ("unetpp", {"deep_supervision": True}),
    ("unetpp", {"deep_supervision": True, "block": "cmrf"}),
    ("tinyunet", {"block": "double_conv"}),
    *[("tinyunet", {"n_dwconv": n}) for n in (1, 2, 4, 16)],
    ("unetv2", {"deep_supervision": False}),
    ("unetv2", {"sdi": False}),
    ("unetv2", {"attention": False}),
    ("unetv2", {"sdi": False, "attention": True}),
    ("lighter_unet", {"groups_c": 1}),
    ("lighter_unet", {"groups_c": 4}),
    ("light_unet", {"norm": None}),
]
VARIANT_IDS = [arch + "".join(f"-{k}={v}" for k, v in options.items()) for arch, options in VARIANTS]
SIZES = [(32, 32), (64, 32)]


pytestmark = pytest.mark.usefixtures("single_thread")


def small_model(arch: str, **options) -> nn.Module:
    torch.manual_seed(0)
    return create_model(arch, in_channels=IN_CHANNELS, num_classes=NUM_CLASSES, **SMALL, **options)


def as_list(output: torch.Tensor | list[torch.Tensor]) -> list[torch.Tensor]:
    return output if isinstance(output, list) else [output]


def freeze_batchnorm(model: nn.Module) -> nn.Module:
    """Train mode, but BatchNorm on running statistics, so train- and eval-mode heads can be compared."""
    model.train()
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.eval()
    return model


# --- the shared suite -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("arch", "options"), VARIANTS, ids=VARIANT_IDS)
def test_forward_shapes_and_finite(arch, options):
    model = small_model(arch, **options)
    heads = 4 if arch in ("unetpp", "unet_plus") else 2
    for height, width in SIZES:
        x = torch.randn(2, IN_CHANNELS, height, width)
        model.train()
        outputs = as_list(model(x))
        assert len(outputs) == (heads if getattr(model, "deep_supervision", False) else 1)
        model.eval()
        with torch.no_grad():
            outputs.append(model(x))
        for output in outputs:
            assert output.shape == (2, NUM_CLASSES, height, width)
            assert torch.isfinite(output).all()


@pytest.mark.parametrize(("arch", "options"), VARIANTS, ids=VARIANT_IDS)
def test_backward_reaches_every_parameter(arch, options):
    model = small_model(arch, **options).train()
    loss = sum(output.square().mean() for output in as_list(model(torch.randn(2, IN_CHANNELS, 32, 32))))
    loss.backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None, f"{name} receives no gradient"
        assert torch.isfinite(parameter.grad).all(), name


@pytest.mark.parametrize(("arch", "options"), VARIANTS, ids=VARIANT_IDS)
def test_eval_mode_is_deterministic(arch, options):
    model = small_model(arch, **options).eval()
    x = torch.randn(1, IN_CHANNELS, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), model(x))


@pytest.mark.parametrize("arch", list_models())
def test_every_network_keeps_the_contract(arch):
    """Every registered network, 2D and 3D, is a SegmentationNetwork that states its paper and official code, the
    dimensions and input multiple it takes, and the two attributes the training code reads."""
    spec = _spec(arch)
    assert issubclass(spec.model_class, SegmentationNetwork)
    for fact in ("paper", "official_code"):
        value = getattr(spec.model_class, fact, "")
        assert isinstance(value, str) and len(value) > 10, (arch, fact)
    model = create_model(arch, in_channels=1, num_classes=2)
    assert model.spatial_dims == model_spatial_dims(arch)
    assert isinstance(model.size_divisor, int) and model.size_divisor >= 1
    assert isinstance(model.deep_supervision, bool) and isinstance(model.channels_last, bool)
    assert model.auxiliary_loss is None  # before any forward


def test_the_contract_adds_no_weights():
    """The base class holds no parameter, buffer or module: a network's state is its own layers'."""
    assert not list(SegmentationNetwork().state_dict()) and not list(SegmentationNetwork().children())


def test_a_wrong_input_size_is_refused_once_by_the_contract():
    model = create_model("unet", in_channels=1, num_classes=1, width_mult=0.125)
    refused = r"UNet takes inputs whose height and width are multiples of 16 and at least 16; got 40x48"
    with pytest.raises(ValueError, match=refused):
        model(torch.zeros(1, 1, 40, 48))
    volumes = create_model("unet3d", in_channels=1, num_classes=2, width_mult=0.125)
    with pytest.raises(ValueError, match=r"depth, height and width are multiples of 8"):
        volumes(torch.zeros(1, 1, 12, 16, 16))
    # The slice-by-slice U-Net takes any depth: only its slices pass through the 2D network.
    slices = create_model("unet2d_slices", in_channels=1, num_classes=2, width_mult=0.125)
    assert slices.eval()(torch.zeros(1, 1, 3, 16, 16)).shape == (1, 2, 3, 16, 16)


@pytest.mark.parametrize("arch", ARCHS_2D)
def test_bad_input_size_is_a_clear_error(arch):
    model = small_model(arch).eval()
    divisor = model.size_divisor
    bad = 3 * divisor // 2 if divisor > 1 else model.min_input_size // 2
    with pytest.raises(ValueError, match=f"multiples of {divisor}"):
        model(torch.randn(1, IN_CHANNELS, bad, bad))


@pytest.mark.parametrize("arch", ARCHS_2D)
def test_unknown_option_lists_valid_options(arch):
    with pytest.raises(ValueError, match="valid options") as error:
        create_model(arch, in_channels=1, num_classes=1, no_such_option=1)
    assert all(option in str(error.value) for option in model_options(arch))


def test_unknown_arch_lists_valid_archs():
    with pytest.raises(ValueError, match="valid archs") as error:
        create_model("no_such_arch", in_channels=1, num_classes=1)
    assert all(arch in str(error.value) for arch in list_models())


@pytest.mark.parametrize(
    ("arch", "options"),
    [
        ("unet", {"norm": "group"}),
        ("unet", {"block": "resnet"}),
        ("unet", {"block": "cmrf", "norm": None}),
        ("unet", {"n_dwconv": 4}),  # n_dwconv without CMRF blocks
        ("unet", {"filters": (32, 64, 128)}),
        ("unet", {"width_mult": 0.0}),
        ("unetpp", {"ds_mode": "L2"}),  # ds_mode without deep supervision
        ("unetpp", {"deep_supervision": True, "ds_mode": "L5"}),
        ("unetv2", {"encoder": "resnet50"}),
        ("unetv2", {"encoder": "pvt_v2_b2", "width_mult": 0.5}),
        ("unetv2", {"ds_mode": "L1"}),
        ("lighter_unet", {"groups_c": 0}),
        ("lighter_unet", {"groups_c": 16, "filters": (56, 112, 224, 448, 448)}),  # 56 // 16 = 3 groups
    ],
)
def test_invalid_option_values_raise(arch, options):
    with pytest.raises(ValueError):
        create_model(arch, in_channels=3, num_classes=1, **options)


def test_options_of_other_variants_are_rejected():
    with pytest.raises(ValueError, match="unknown option"):
        create_model("light_unet", in_channels=3, num_classes=1, groups_c=4)
    with pytest.raises(ValueError, match="unknown option"):
        create_model("unet", in_channels=3, num_classes=1, deep_supervision=True)


def test_light_family_pads_odd_sizes():
    model = small_model("unet_bilinear").eval()
    with torch.no_grad():
        assert model(torch.randn(1, IN_CHANNELS, 37, 21)).shape == (1, NUM_CLASSES, 37, 21)


# --- exact parameter counts of the official configurations -----------------------------------------------------


def conv_params(c_in: int, c_out: int, kernel: int = 3, bias: bool = True) -> int:
    return c_in * c_out * kernel * kernel + (c_out if bias else 0)


def unet_family_params(filters, in_channels, num_classes, kind, heads=1):
    """Sum of conv weights + biases of the official Keras U-Net / UNet+ / UNet++ (no normalisation)."""

    def node(c_in, c_out):  # two 3x3 convolutions with bias
        return conv_params(c_in, c_out) + conv_params(c_out, c_out)

    total = node(in_channels, filters[0]) + sum(node(filters[i - 1], filters[i]) for i in range(1, 5))
    if kind == "unet":
        decoder_nodes = [(i, 1) for i in range(4)]  # X(i, 4 - i) concatenates one skip
    else:
        decoder_nodes = [(i, j if kind == "unetpp" else 1) for j in range(1, 5) for i in range(5 - j)]
    for i, skips in decoder_nodes:
        up = conv_params(filters[i + 1], filters[i], kernel=2)
        total += up + node(filters[i] * (skips + 1), filters[i])
    return total + heads * conv_params(filters[0], num_classes, kernel=1)


def cmrf_params(c_in: int, c_out: int, n: int = 8) -> int:
    """1x1 reduce + BN, N - 1 depthwise 3x3 + BN, 1x1 expand + BN; no conv biases; BN has 2 per channel."""
    reduced, half = c_out // n, c_out // (2 * n)
    return (c_in * reduced + 2 * reduced) + (n - 1) * (9 * half + 2 * half) + (c_out // 2 * c_out + 2 * c_out)


def tinyunet_params(in_channels: int, num_classes: int, n: int = 8) -> int:
    widths = (64, 128, 256, 512)
    encoder = sum(cmrf_params(c_in, c_out, n) for c_in, c_out in zip((in_channels, *widths[:-1]), widths, strict=True))
    decoder = sum(cmrf_params(c_in, c_out, n) for c_in, c_out in zip((1024, 768, 384, 192), widths[::-1], strict=True))
    return encoder + decoder + conv_params(64, num_classes, kernel=1)


PVT_V2_B2_FEATURE_PARAMS = 24_849_856  # timm pvt_v2_b2 without its classifier = the official backbone


def unetv2_params(encoder_params, channels=(64, 128, 320, 512), c=32, num_classes=1, heads=2, deconvs=3):
    attention = sum(2 * ch * (ch // 16) for ch in channels) + len(channels) * 2 * 7 * 7
    projections = sum(ch * c + 2 * c for ch in channels)  # 1x1 conv without bias + BatchNorm
    sdi = 4 * 4 * conv_params(c, c)
    decoder = deconvs * conv_params(c, c, kernel=4, bias=False) + heads * conv_params(c, num_classes, kernel=1)
    return encoder_params + attention + projections + sdi + decoder


UNET = (32, 64, 128, 256, 512)
WIDE = (35, 70, 140, 280, 560)
NO_NORM = {"norm": None}
NO_NORM_DS = {"norm": None, "deep_supervision": True}
OFFICIAL_COUNTS = [
    # (arch, in_channels, num_classes, options, exact count, count derived by hand or None)
    ("unet", 1, 1, NO_NORM, 7_759_521, unet_family_params(UNET, 1, 1, "unet")),
    ("wide_unet", 1, 1, NO_NORM, 9_282_246, unet_family_params(WIDE, 1, 1, "unet")),
    ("unet_plus", 1, 1, NO_NORM, 8_728_257, unet_family_params(UNET, 1, 1, "unet_plus")),
    ("unet_plus", 1, 1, NO_NORM_DS, 8_728_356, unet_family_params(UNET, 1, 1, "unet_plus", heads=4)),
    ("unetpp", 1, 1, NO_NORM, 9_041_601, unet_family_params(UNET, 1, 1, "unetpp")),
    ("unetpp", 1, 1, NO_NORM_DS, 9_041_700, unet_family_params(UNET, 1, 1, "unetpp", heads=4)),
    ("tinyunet", 3, 2, {}, 481_170, tinyunet_params(3, 2)),
    ("tinyunet", 3, 2, {"n_dwconv": 16}, 421_930, tinyunet_params(3, 2, n=16)),
    # The Light-U-net README's counts.
    ("unet_bilinear", 3, 1, {}, 17_267_393, None),
    ("light_unet", 3, 1, {}, 11_000_257, None),
    ("lighter_unet", 3, 1, {"groups_c": 128}, 7_944_661, None),
    ("lighter_unet", 3, 1, {"groups_c": 1}, 1_983_583, None),
]


@pytest.mark.parametrize(
    ("arch", "in_channels", "num_classes", "options", "expected", "derived"),
    OFFICIAL_COUNTS,
    ids=[f"{row[0]}-{row[4]}" for row in OFFICIAL_COUNTS],
)
def test_official_parameter_counts(arch, in_channels, num_classes, options, expected, derived):
    model = create_model(arch, in_channels=in_channels, num_classes=num_classes, **options)
    assert count_parameters(model) == expected
    assert derived in (None, expected)


def test_batchnorm_adds_two_parameters_per_channel():
    official = count_parameters(create_model("unet", in_channels=1, num_classes=1, norm=None))
    with_bn = count_parameters(create_model("unet", in_channels=1, num_classes=1))
    conv_outputs = 2 * 2 * (32 + 64 + 128 + 256) + 2 * 512  # two convolutions per node, 9 nodes
    assert with_bn - official == 2 * conv_outputs


@pytest.fixture(scope="module")
def pvt_unetv2():
    torch.manual_seed(0)
    return create_model("unetv2", in_channels=3, num_classes=1, encoder="pvt_v2_b2")


def test_unetv2_pvt_parameter_count(pvt_unetv2):
    assert count_parameters(pvt_unetv2.encoder) == PVT_V2_B2_FEATURE_PARAMS
    assert count_parameters(pvt_unetv2) == 25_128_586 == unetv2_params(PVT_V2_B2_FEATURE_PARAMS)
    # The official model also builds a fourth transposed convolution and two more heads, never used in forward:
    # with them it has the 25,145,036 (25.15M) the paper reports.
    assert unetv2_params(PVT_V2_B2_FEATURE_PARAMS, heads=4, deconvs=4) == 25_145_036


# A few of timm's pvt_v2_b2 state-dict keys (and shapes), so timm/official pretrained weights keep loading.
PVT_V2_B2_TIMM_KEYS = {
    "patch_embed.proj.weight": (64, 3, 7, 7),
    "patch_embed.norm.bias": (64,),
    "stages.0.blocks.0.attn.q.weight": (64, 64),
    "stages.0.blocks.2.attn.kv.bias": (128,),
    "stages.0.blocks.0.attn.sr.weight": (64, 64, 8, 8),
    "stages.0.blocks.1.attn.norm.weight": (64,),
    "stages.1.downsample.proj.weight": (128, 64, 3, 3),
    "stages.1.blocks.3.mlp.dwconv.weight": (1024, 1, 3, 3),
    "stages.2.blocks.5.mlp.fc1.weight": (1280, 320),
    "stages.2.blocks.5.attn.proj.weight": (320, 320),
    "stages.3.blocks.2.norm2.weight": (512,),
    "stages.3.blocks.0.mlp.fc2.weight": (512, 2048),
    "stages.3.norm.weight": (512,),
}


def test_pvt_v2_b2_state_dict_follows_timm_names(pvt_unetv2):
    state = pvt_unetv2.encoder.backbone.state_dict()
    assert {key: tuple(state[key].shape) for key in PVT_V2_B2_TIMM_KEYS if key in state} == PVT_V2_B2_TIMM_KEYS
    assert len(state) == 332  # timm's features_only state dict has 332 entries
    assert not any(key.startswith("stages.3.blocks.0.attn.sr") for key in state)  # sr_ratio 1: no reduction


def test_pvt_v2_b2_feature_strides_and_channels(pvt_unetv2):
    encoder = pvt_unetv2.encoder.eval()
    with torch.no_grad():
        features = encoder(torch.randn(1, 3, 64, 96))
    assert encoder.out_channels == (64, 128, 320, 512)
    assert [tuple(f.shape) for f in features] == [
        (1, c, 64 // s, 96 // s) for c, s in zip(encoder.out_channels, (4, 8, 16, 32), strict=True)
    ]


def test_pvt_v2_b2_drop_path_and_in_channels():
    from repro.models.pvt_v2 import pvt_v2_b2

    backbone = pvt_v2_b2(1, drop_path_rate=0.1)
    rates = [block.drop_path1.p for stage in backbone.stages for block in stage.blocks]
    assert len(rates) == 16 and rates[0] == 0 and rates[-1] == pytest.approx(0.1)
    assert count_parameters(backbone) == PVT_V2_B2_FEATURE_PARAMS - 2 * 64 * 7 * 7  # two fewer input channels


def test_pvt_v2_convert_official_state_dict():
    from repro.models.pvt_v2 import convert_official_state_dict

    official = [
        "patch_embed1.proj.weight",
        "patch_embed3.norm.bias",
        "block2.3.mlp.dwconv.dwconv.weight",
        "block4.0.attn.kv.weight",
        "norm3.weight",
        "head.weight",
    ]
    timm = [
        "patch_embed.proj.weight",
        "stages.2.downsample.norm.bias",
        "stages.1.blocks.3.mlp.dwconv.weight",
        "stages.3.blocks.0.attn.kv.weight",
        "stages.2.norm.weight",
    ]
    assert list(convert_official_state_dict(dict.fromkeys(official))) == timm
    assert list(convert_official_state_dict(dict.fromkeys(timm))) == timm


def test_unetv2_pvt_forward_backward(pvt_unetv2):
    x = torch.randn(1, 3, 64, 64)
    outputs = pvt_unetv2.train()(x)
    assert [o.shape for o in outputs] == [(1, 1, 64, 64)] * 2
    sum(o.mean() for o in outputs).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in pvt_unetv2.parameters())
    with torch.no_grad():
        assert torch.isfinite(pvt_unetv2.eval()(x)).all()


def test_unetv2_ablations_remove_modules():
    full = count_parameters(small_model("unetv2"))
    no_attention = count_parameters(small_model("unetv2", attention=False))
    no_sdi = count_parameters(small_model("unetv2", sdi=False))
    assert no_sdi < no_attention < full
    assert small_model("unetv2", sdi=False).sdi is None


# --- deep supervision ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["unetpp", "unet_plus"])
def test_nested_deep_supervision_heads_and_pruning(arch):
    model = freeze_batchnorm(small_model(arch, deep_supervision=True))
    x = torch.randn(1, IN_CHANNELS, 32, 32)
    with torch.no_grad():
        heads = model(x)
        model.eval()
        assert model.ds_mode == "average"
        # The paper's average is of probabilities (softmax here: NUM_CLASSES = 2), not of logits.
        torch.testing.assert_close(model(x).softmax(dim=1), torch.stack(heads).softmax(dim=2).mean(dim=0))
        for depth in range(1, 5):
            model.set_ds_mode(f"L{depth}")
            torch.testing.assert_close(model(x), heads[depth - 1])
    flops = []
    for depth in range(1, 5):
        model.ds_mode = f"L{depth}"
        flops.append(count_flops(model, 32, IN_CHANNELS))
    assert flops == sorted(set(flops)), f"pruned FLOPs must grow strictly with depth: {flops}"
    model.ds_mode = "average"
    assert count_flops(model, 32, IN_CHANNELS) > flops[-1]


def test_unetv2_deep_supervision_modes():
    model = freeze_batchnorm(small_model("unetv2"))
    x = torch.randn(1, IN_CHANNELS, 64, 64)
    with torch.no_grad():
        auxiliary, final = model(x)
        model.eval()
        torch.testing.assert_close(model(x), (auxiliary + final) / 2)
        model.ds_mode = "final"
        torch.testing.assert_close(model(x), final)


def test_ds_mode_is_validated_after_construction():
    model = small_model("unetpp", deep_supervision=True)
    with pytest.raises(ValueError, match="L4"):
        model.ds_mode = "L0"
    with pytest.raises(ValueError, match="deep_supervision"):
        small_model("unetpp").set_ds_mode("L1")


# --- blocks ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 2, 4, 8, 16])
def test_cmrf_channel_bookkeeping(n):
    block = CMRF(24, 64, n_groups=n)
    assert block.reduce[0].out_channels == 64 // n
    assert len(block.cascade) == n - 1
    assert all(dw[0].in_channels == dw[0].groups == 64 // (2 * n) for dw in block.cascade)
    assert block.expand[0].in_channels == 32
    assert count_parameters(block) == cmrf_params(24, 64, n)
    assert block(torch.randn(2, 24, 8, 8)).shape == (2, 64, 8, 8)
    assert not block.residual and CMRF(64, 64, n_groups=n).residual


def test_cmrf_rejects_widths_not_divisible_by_2n():
    with pytest.raises(ValueError, match="2\\*N"):
        CMRF(16, 24, n_groups=8)


def test_cmrf_widths_are_rounded_to_multiples_of_2n():
    assert create_model("wide_unet", in_channels=1, num_classes=1, block="cmrf").widths == (32, 64, 144, 288, 560)
    assert small_model("tinyunet", n_dwconv=16).widths == (32, 32, 64, 128)
    assert scale_width(35, 1.0) == 35 and scale_width(70, 0.25) == 18


@pytest.mark.parametrize("size", [(64, 64), (64, 96)])
def test_sdi_output_shape_per_level(size):
    height, width = size
    channels = 8
    features = [torch.randn(2, channels, height // 2**k, width // 2**k) for k in range(4)]
    sdi = SDI(channels)
    for level, feature in enumerate(features):
        assert sdi(features, level).shape == feature.shape


def _bilinear_align_corners(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resizing with the corners aligned, from its definition: output pixel i samples the input at
    i * (n_in - 1) / (n_out - 1) along each axis and blends its two neighbours linearly."""
    for axis, n_out in ((2, size[0]), (3, size[1])):
        n_in = x.shape[axis]
        src = torch.arange(n_out, dtype=x.dtype) * ((n_in - 1) / (n_out - 1) if n_out > 1 else 0.0)
        low = src.floor().long().clamp(max=n_in - 1)
        high = (low + 1).clamp(max=n_in - 1)
        shape = [1, 1, 1, 1]
        shape[axis] = n_out
        weight = (src - low).reshape(shape)
        x = x.index_select(axis, low) * (1 - weight) + x.index_select(axis, high) * weight
    return x


def _sdi_reference(sdi: SDI, features: list[torch.Tensor], target: int) -> torch.Tensor:
    """SDI from the paper's equations, in plain torch: every level i resized to level ``target`` (a finer level by
    average pooling over its 2^(target - i) x 2^(target - i) blocks, a coarser one by bilinear interpolation), then
    theta_i = its own 3x3 convolution with bias, then the Hadamard product of all theta_i."""
    size = tuple(features[target].shape[-2:])
    fused = torch.ones(features[target].shape)
    for level, feature in enumerate(features):
        if level < target:
            feature = F.avg_pool2d(feature, 2 ** (target - level))
        elif level > target:
            feature = _bilinear_align_corners(feature, size)
        conv = sdi.smooth[level]
        fused = fused * F.conv2d(feature, conv.weight, conv.bias, padding=1)
    return fused


@pytest.mark.parametrize("size", [(16, 16), (16, 24)])
def test_sdi_equals_the_papers_equations(size):
    torch.manual_seed(0)
    height, width = size
    features = [torch.randn(2, 3, height // 2**k, width // 2**k) for k in range(4)]
    sdi = SDI(3)
    with torch.no_grad():
        for level in range(4):
            assert torch.allclose(sdi(features, level), _sdi_reference(sdi, features, level), atol=1e-5)


def test_sdi_multiplies_the_smoothed_levels_by_hand():
    """Constant levels 2, 3, 5, 7 stay constant when resized; with 3x3 kernels that pass the centre pixel only,
    scaled by 1, 2, 1, 1, and biases 0, 1, 0, -1, every output pixel is 2 x (2*3 + 1) x 5 x (7 - 1) = 420 (a sum of the
    levels would give 26, a mean 6.5)."""
    sdi = SDI(1)
    with torch.no_grad():
        for conv, scale, bias in zip(sdi.smooth, (1.0, 2.0, 1.0, 1.0), (0.0, 1.0, 0.0, -1.0), strict=True):
            conv.weight.zero_()
            conv.weight[0, 0, 1, 1] = scale
            conv.bias.fill_(bias)
        features = [torch.full((1, 1, 8 // 2**k, 8 // 2**k), value) for k, value in enumerate((2.0, 3.0, 5.0, 7.0))]
        for level in range(4):
            out = sdi(features, level)
            assert out.shape == features[level].shape and torch.allclose(out, torch.full_like(out, 420.0))


def test_skip_projection_attention_is_optional():
    x = torch.randn(2, 64, 8, 8)
    for attention in (True, False):
        projection = SkipProjection(64, 32, attention=attention)
        assert projection(x).shape == (2, 32, 8, 8)
    assert count_parameters(SkipProjection(64, 32)) - count_parameters(SkipProjection(64, 32, attention=False)) == (
        2 * 64 * 4 + 2 * 49
    )


def test_models_import_no_training_or_data_code():
    package = Path(__file__).resolve().parents[1] / "repro" / "models"
    for path in package.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("repro"):
                assert node.module.startswith("repro.models"), f"{path.name} imports {node.module}"
