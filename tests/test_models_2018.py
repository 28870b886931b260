"""The 2018 UNet++ setup of the official Keras code: its initialisation (``init="keras2018"``), the kernels its
``l2(1e-4)`` penalty applies to, and UNet++'s ``ds_mode="average"``, which averages the heads' probabilities.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from repro.complexity import count_parameters
from repro.models import create_model
from repro.models.blocks import UniformDropout, keras_l2_parameters, mean_probability_logits
from repro.models.unet import UNET_FILTERS

pytestmark = pytest.mark.usefixtures("single_thread")

OFFICIAL = {"norm": None, "dropout": 0.5}
# Keras's he_normal: a normal truncated at two of its standard deviations, rescaled to std sqrt(2 / fan_in);
# the truncated standard normal's standard deviation (scipy.stats.truncnorm.std(-2, 2)) sets the bound.
TRUNCATED_STD = 0.8796256610342398


def official(arch: str, init: str, **options) -> nn.Module:
    torch.manual_seed(0)
    return create_model(arch, in_channels=1, num_classes=1, init=init, **OFFICIAL, **options)


def convolutions(model: nn.Module) -> tuple[list[nn.Conv2d], list[nn.ConvTranspose2d]]:
    modules = list(model.modules())
    return (
        [m for m in modules if isinstance(m, nn.Conv2d)],
        [m for m in modules if isinstance(m, nn.ConvTranspose2d)],
    )


# --- init="keras2018" -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["unet", "unetpp"])
def test_keras2018_biases_are_zero(arch):
    convs, transposed = convolutions(official(arch, "keras2018"))
    for module in convs + transposed:
        assert torch.count_nonzero(module.bias) == 0
    # PyTorch's default draws the biases, so the check above tells the two apart.
    convs, _ = convolutions(official(arch, "pytorch"))
    assert all(torch.count_nonzero(m.bias) > 0 for m in convs)


@pytest.mark.parametrize(("arch", "options"), [("unet", {}), ("unetpp", {"deep_supervision": True})])
def test_keras2018_conv_kernels_are_truncated_he_normal(arch, options):
    convs, _ = convolutions(official(arch, "keras2018", **options))
    checked = 0
    for conv in convs:
        fan_in = conv.in_channels * conv.kernel_size[0] * conv.kernel_size[1]
        target = math.sqrt(2 / fan_in)
        weight = conv.weight.detach().double()
        assert weight.abs().max() <= 2 * target / TRUNCATED_STD + 1e-6
        if weight.numel() >= 4096:  # the sample std is then within ~1.5% of the true one
            assert weight.std().item() == pytest.approx(target, rel=0.05)
            assert weight.mean().abs().item() < 0.05 * target
            checked += 1
    assert checked >= len(convs) - 6  # all but the small first convolutions and 1x1 heads


def test_pytorch_init_is_not_he_normal():
    """PyTorch's default (Kaiming uniform, a=sqrt(5)) has std sqrt(1 / (3 fan_in)): the std check can fail."""
    convs, _ = convolutions(official("unet", "pytorch"))
    conv = convs[4]  # a 3x3, 64 -> 128 convolution
    fan_in = conv.in_channels * 9
    assert conv.weight.std().item() == pytest.approx(math.sqrt(1 / (3 * fan_in)), rel=0.05)
    assert conv.weight.std().item() < 0.5 * math.sqrt(2 / fan_in)


@pytest.mark.parametrize("arch", ["unet", "unetpp"])
def test_keras2018_transposed_kernels_are_glorot_uniform(arch):
    _, transposed = convolutions(official(arch, "keras2018"))
    assert transposed
    for up in transposed:
        area = up.kernel_size[0] * up.kernel_size[1]
        bound = math.sqrt(6 / (area * (up.in_channels + up.out_channels)))
        weight = up.weight.detach().double()
        assert weight.abs().max() <= bound
        assert weight.abs().max() > 0.95 * bound
        assert weight.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.05)


@pytest.mark.parametrize(
    ("arch", "options", "expected"),
    [
        ("unet", {}, 7_759_521),
        ("wide_unet", {}, 9_282_246),
        ("unet_plus", {}, 8_728_257),
        ("unet_plus", {"deep_supervision": True}, 8_728_356),
        ("unetpp", {}, 9_041_601),
        ("unetpp", {"deep_supervision": True}, 9_041_700),
    ],
)
def test_init_leaves_official_parameter_counts(arch, options, expected):
    assert count_parameters(official(arch, "keras2018", **options)) == expected
    assert count_parameters(official(arch, "pytorch", **options)) == expected


@pytest.mark.parametrize("arch", ["unet", "wide_unet", "unet_plus", "unetpp"])
def test_invalid_init_is_rejected(arch):
    with pytest.raises(ValueError, match="init"):
        create_model(arch, in_channels=1, num_classes=1, init="he_normal")


# --- the kernels the official l2(1e-4) penalises ----------------------------------------------------------------


def test_keras_l2_parameters_of_official_unet():
    model = official("unet", "keras2018")
    selected = keras_l2_parameters(model)
    # Counted by hand: 5 encoder and 4 decoder nodes of two 3x3 convolutions each, and the 1x1 head.
    assert len(selected) == 2 * 5 + 2 * 4 + 1 == 19
    w = UNET_FILTERS
    encoder = sum(9 * c_in * c_out + 9 * c_out * c_out for c_in, c_out in zip((1, *w[:-1]), w, strict=True))
    decoder = sum(9 * (2 * c) * c + 9 * c * c for c in w[:-1])  # [upsampled, skip] -> c, then c -> c
    head = w[0] * 1
    assert sum(p.numel() for p in selected) == encoder + decoder + head
    # Exactly the node and head kernels: no bias, no transposed-convolution kernel.
    names = {id(p): name for name, p in model.named_parameters()}
    chosen = sorted(names[id(p)] for p in selected)
    assert len(set(chosen)) == len(chosen)
    assert chosen == sorted(n for n in names.values() if n.endswith(".weight") and ".up." not in n)


def test_keras_l2_parameters_of_deeply_supervised_unetpp():
    selected = keras_l2_parameters(official("unetpp", "keras2018", deep_supervision=True))
    # 5 encoder nodes and 10 nested nodes of two convolutions each, and four heads.
    assert len(selected) == 2 * 15 + 4
    assert sum(p.dim() == 4 and p.shape[-1] == 1 for p in selected) == 4


def test_keras_l2_parameters_skip_batchnorm():
    model = create_model("unet", in_channels=1, num_classes=1)
    selected = {id(p) for p in keras_l2_parameters(model)}
    batchnorm = [p for m in model.modules() if isinstance(m, nn.BatchNorm2d) for p in m.parameters()]
    assert batchnorm and not selected & {id(p) for p in batchnorm}


# --- ds_mode="average" averages probabilities --------------------------------------------------------------------


def random_heads(num_classes: int, scale: float, dtype=torch.float32) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(num_classes)
    return [scale * torch.randn(2, num_classes, 16, 16, generator=generator, dtype=dtype) for _ in range(4)]


def test_average_of_binary_heads_is_the_mean_probability():
    heads = random_heads(1, scale=6.0)
    combined = mean_probability_logits(heads)
    mean_probability = torch.stack(heads).sigmoid().mean(dim=0)
    torch.testing.assert_close(combined.sigmoid(), mean_probability, atol=1e-6, rtol=0)
    # With spread-out logits this differs from averaging logits (the former behaviour).
    assert (torch.stack(heads).mean(dim=0).sigmoid() - mean_probability).abs().max() > 0.1


def test_average_of_multiclass_heads_is_the_mean_softmax():
    heads = random_heads(3, scale=6.0)
    combined = mean_probability_logits(heads)
    mean_probability = torch.stack(heads).softmax(dim=2).mean(dim=0)
    torch.testing.assert_close(combined.softmax(dim=1), mean_probability, atol=1e-6, rtol=0)
    # The result is the log of the mean probabilities themselves.
    torch.testing.assert_close(combined.exp(), mean_probability, atol=1e-6, rtol=0)
    assert (torch.stack(heads).mean(dim=0).softmax(dim=1) - mean_probability).abs().max() > 0.1


def test_average_stays_finite_for_saturated_heads():
    heads = [torch.full((1, 1, 2, 2), value) for value in (200.0, 150.0, -300.0, 90.0)]
    combined = mean_probability_logits(heads)
    assert torch.isfinite(combined).all()
    torch.testing.assert_close(combined.sigmoid(), torch.full_like(combined, 0.75))  # three sure, one not
    heads = [torch.tensor([[[[500.0]], [[-500.0]]]]), torch.tensor([[[[-500.0]], [[500.0]]]])]
    torch.testing.assert_close(mean_probability_logits(heads).softmax(dim=1).flatten(), torch.tensor([0.5, 0.5]))


def test_average_decides_as_the_mean_probability():
    # One confident head against three mildly negative ones: the mean logit (1.75) says foreground,
    # the mean probability (0.45) background.
    heads = [torch.full((1, 1, 1, 1), value) for value in (10.0, -1.0, -1.0, -1.0)]
    assert mean_probability_logits(heads).item() < 0
    for num_classes in (1, 3):
        heads = random_heads(num_classes, scale=3.0, dtype=torch.float64)
        combined = mean_probability_logits(heads)
        probabilities = torch.stack(heads)
        if num_classes == 1:
            mean = probabilities.sigmoid().mean(dim=0)
            assert torch.equal(combined > 0, mean > 0.5)
        else:
            mean = probabilities.softmax(dim=2).mean(dim=0)
            assert torch.equal(combined.argmax(dim=1), mean.argmax(dim=1))


@pytest.mark.parametrize("num_classes", [1, 3])
@pytest.mark.parametrize("arch", ["unetpp", "unet_plus"])
def test_model_average_mode_is_the_mean_of_head_probabilities(arch, num_classes):
    torch.manual_seed(0)
    model = create_model(
        arch, in_channels=3, num_classes=num_classes, norm=None, deep_supervision=True, width_mult=0.25
    )
    with torch.no_grad():
        for head in model.heads:  # spread the logits so averaging logits and probabilities differ
            head.weight.mul_(30)
        x = torch.randn(2, 3, 32, 32)
        heads = torch.stack(model.train()(x))  # no BatchNorm, no dropout: the same heads as in eval mode
        combined = model.eval()(x)
    if num_classes == 1:
        expected, activate = heads.sigmoid().mean(dim=0), torch.sigmoid
    else:
        expected, activate = heads.softmax(dim=2).mean(dim=0), lambda t: t.softmax(dim=1)
    torch.testing.assert_close(activate(combined), expected, atol=1e-6, rtol=0)
    assert (activate(heads.mean(dim=0)) - expected).abs().max() > 1e-3


def test_uniform_dropout_zeroes_p_of_the_elements_scales_the_rest_and_is_the_identity_in_eval():
    torch.manual_seed(0)
    dropout = UniformDropout(0.5)
    x = torch.ones(64, 8, 32, 32, requires_grad=True)
    y = dropout(x)
    kept = y != 0
    assert abs(kept.float().mean().item() - 0.5) < 0.005  # 524,288 draws: s.d. of the fraction 0.0007
    assert torch.equal(y[kept], torch.full_like(y[kept], 2.0))
    y.sum().backward()
    assert torch.equal(x.grad, kept.float() * 2.0)  # the gradient flows through the kept elements only
    assert torch.equal(UniformDropout(0.2).eval()(x), x)
    with pytest.raises(ValueError, match="in \\[0, 1\\)"):
        UniformDropout(1.0)
