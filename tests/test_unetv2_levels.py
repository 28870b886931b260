"""U-Net v2's ``levels`` option: the official README's all-levels variant (full-resolution logits from all six
levels of the CNN encoder) against the faithful stride-4 layout, with both ablations.

Small models (``width_mult=0.25``) on 32x32 and 64x32 inputs, to stay fast on a CPU.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from repro.complexity import count_parameters
from repro.models import create_model
from repro.models.sdi import SDI, ChannelAttention, SpatialAttention

IN_CHANNELS = 3
NUM_CLASSES = 2
SIZES = [(32, 32), (64, 32)]
ABLATIONS = [{}, {"sdi": False}, {"attention": False}, {"sdi": False, "attention": True}]
ABLATION_IDS = ["full", "no_sdi", "no_attention", "attention_only"]

pytestmark = pytest.mark.usefixtures("single_thread")


def small_unetv2(**options) -> nn.Module:
    torch.manual_seed(0)
    return create_model("unetv2", in_channels=IN_CHANNELS, num_classes=NUM_CLASSES, width_mult=0.25, **options)


def conv_params(c_in: int, c_out: int, kernel: int, bias: bool) -> int:
    return c_in * c_out * kernel * kernel + (c_out if bias else 0)


def attention_params(channels: int) -> int:
    """Channel-attention MLP (hidden width channels // 16, at least 1) + the 7x7 spatial-attention conv."""
    return 2 * channels * max(1, channels // 16) + 2 * 7 * 7


def expected_params(model: nn.Module, *, sdi: bool = True, attention: bool = True, heads: int = 2) -> int:
    """Parameter count derived from the architecture description, given the encoder's widths."""
    channels = model.encoder.out_channels
    c = model.up[0].in_channels
    levels = len(channels)
    count = count_parameters(model.encoder)
    count += sum(attention_params(ch) for ch in channels) if attention else 0
    count += sum(ch * c + 2 * c for ch in channels)  # 1x1 projection without bias + BatchNorm
    count += levels * levels * conv_params(c, c, 3, bias=True) if sdi else 0
    count += (levels - 1) * conv_params(c, c, 4, bias=False)
    return count + heads * conv_params(c, NUM_CLASSES, 1, bias=True)


def count_modules(model: nn.Module, kind: type[nn.Module]) -> int:
    return sum(isinstance(module, kind) for module in model.modules())


def node_widths(model: nn.Module) -> tuple[int, ...]:
    """Output width of each encoder node (that of its last convolution)."""
    return tuple(
        [m for m in node.modules() if isinstance(m, nn.Conv2d)][-1].out_channels for node in model.encoder.nodes
    )


@pytest.mark.parametrize("options", ABLATIONS, ids=ABLATION_IDS)
@pytest.mark.parametrize("size", SIZES, ids=[f"{h}x{w}" for h, w in SIZES])
def test_all_levels_full_resolution_output(options, size):
    model = small_unetv2(levels="all", **options)
    x = torch.randn(2, IN_CHANNELS, *size)
    model.train()
    outputs = model(x)
    assert [o.shape for o in outputs] == [(2, NUM_CLASSES, *size)] * 2
    with torch.no_grad():
        model.eval()
        assert model(x).shape == (2, NUM_CLASSES, *size)
        # The decoder itself reaches the input resolution: the final head needs no upsampling.
        auxiliary, final = model._decode(x)
        assert final.shape[-2:] == size
        assert auxiliary.shape[-2:] == (size[0] // 2, size[1] // 2)
        model.ds_mode = "final"
        torch.testing.assert_close(model(x), model.heads[-1](final), rtol=0, atol=0)


def test_all_levels_without_deep_supervision():
    model = small_unetv2(levels="all", deep_supervision=False).eval()
    x = torch.randn(1, IN_CHANNELS, 64, 32)
    with torch.no_grad():
        assert model(x).shape == (1, NUM_CLASSES, 64, 32)
    assert len(model.heads) == 1


def test_default_levels_predict_at_stride_4():
    model = small_unetv2().eval()
    assert model.levels == "stride4"
    x = torch.randn(1, IN_CHANNELS, 64, 32)
    with torch.no_grad():
        features = model.encoder(x)
        assert [f.shape[-2:] for f in features] == [(64 // s, 32 // s) for s in (4, 8, 16, 32)]
        auxiliary, final = model._decode(x)
        assert final.shape[-2:] == (16, 8) and auxiliary.shape[-2:] == (8, 4)
        model.ds_mode = "final"
        upsampled = F.interpolate(model.heads[-1](final), size=(64, 32), mode="bilinear", align_corners=False)
        torch.testing.assert_close(model(x), upsampled)


def test_all_levels_uses_every_encoder_node():
    model = small_unetv2(levels="all").eval()
    x = torch.randn(1, IN_CHANNELS, 64, 32)
    with torch.no_grad():
        features = model.encoder(x)
    assert len(features) == len(model.encoder.nodes) == 6
    assert [f.shape[-2:] for f in features] == [(64 // 2**k, 32 // 2**k) for k in range(6)]
    assert model.encoder.out_channels == node_widths(model)
    assert len(model.skips) == len(model.sdi) == 6 and len(model.up) == 5
    assert all(len(fuse.smooth) == 6 for fuse in model.sdi)


@pytest.mark.parametrize("options", ABLATIONS, ids=ABLATION_IDS)
def test_all_levels_gradients_reach_every_parameter(options):
    model = small_unetv2(levels="all", **options).train()
    # A channel-attention MLP of hidden width 1-2 on the (non-negative, post-ReLU) CNN features can have its
    # hidden ReLU off for the whole batch; then, and only then, its two weights get exactly zero gradient.
    hidden = {}
    for name, module in model.named_modules():
        if isinstance(module, ChannelAttention):
            module.mlp[1].register_forward_hook(lambda _m, _i, out, name=name: hidden.setdefault(name, []).append(out))
    outputs = model(torch.randn(2, IN_CHANNELS, 64, 32))
    sum(o.square().mean() for o in outputs).backward()
    dead = {name for name, outs in hidden.items() if all((out == 0).all() for out in outs)}
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None, name
        assert torch.isfinite(parameter.grad).all(), name
        if name.rsplit(".mlp.", 1)[0] not in dead:
            assert parameter.grad.abs().sum() > 0, name


@pytest.mark.parametrize("levels", ["stride4", "all"])
def test_ablations_remove_their_modules(levels):
    full = small_unetv2(levels=levels)
    no_sdi = small_unetv2(levels=levels, sdi=False)
    no_attention = small_unetv2(levels=levels, attention=False)
    attention_only = small_unetv2(levels=levels, sdi=False, attention=True)
    num_levels = len(full.encoder.out_channels)

    assert count_modules(full, SDI) == num_levels and count_modules(full, ChannelAttention) == num_levels
    assert count_modules(full, SpatialAttention) == num_levels
    # sdi=False alone drops the attention too (it defaults to sdi); attention=True keeps it without SDI.
    cases = [(no_sdi, False, False), (no_attention, True, False), (attention_only, False, True)]
    for model, has_sdi, has_attention in cases:
        assert (model.sdi is not None) == has_sdi
        assert count_modules(model, SDI) == (num_levels if has_sdi else 0)
        assert count_modules(model, ChannelAttention) == count_modules(model, SpatialAttention)
        assert count_modules(model, ChannelAttention) == (num_levels if has_attention else 0)

    assert count_parameters(full) == expected_params(full)
    assert count_parameters(no_sdi) == expected_params(no_sdi, sdi=False, attention=False)
    assert count_parameters(no_attention) == expected_params(no_attention, attention=False)
    assert count_parameters(attention_only) == expected_params(attention_only, sdi=False)
    assert count_parameters(no_sdi) < count_parameters(no_attention) < count_parameters(full)


def test_all_levels_adds_the_two_finest_levels():
    faithful, everything = small_unetv2(), small_unetv2(levels="all")
    assert count_parameters(faithful.encoder) == count_parameters(everything.encoder)
    assert everything.encoder.out_channels[2:] == faithful.encoder.out_channels
    c = faithful.up[0].in_channels
    fine = everything.encoder.out_channels[:2]
    added = (
        sum(attention_params(ch) + ch * c + 2 * c for ch in fine)
        + (6 * 6 - 4 * 4) * conv_params(c, c, 3, bias=True)
        + 2 * conv_params(c, c, 4, bias=False)
    )
    assert count_parameters(everything) - count_parameters(faithful) == added


def test_default_levels_is_the_faithful_model():
    default, explicit = small_unetv2(), small_unetv2(levels="stride4")
    assert count_parameters(default) == expected_params(default)
    default_state, explicit_state = default.state_dict(), explicit.state_dict()
    assert list(default_state) == list(explicit_state)
    assert all(torch.equal(default_state[key], explicit_state[key]) for key in default_state)
    assert len(default.skips) == len(default.sdi) == 4 and len(default.up) == 3
    assert default.encoder.out_channels == node_widths(default)[2:]


def test_all_levels_requires_the_cnn_encoder():
    with pytest.raises(ValueError, match="levels='all' only applies to encoder='cnn'"):
        create_model("unetv2", in_channels=3, num_classes=1, encoder="pvt_v2_b2", levels="all")
    with pytest.raises(ValueError, match="levels"):
        small_unetv2(levels="stride1")
