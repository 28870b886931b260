"""3D U²-Net: shapes, domain selection and isolation, and parameter counts against a hand-derived formula and the
counts of the official code (huangmozhilv/u2net_torch, built with its universal / independent / shared settings).

Forward and backward checks run on 16x16x16 and 16x32x16 volumes with four levels at ``width_mult=0.25``.
"""

from __future__ import annotations

from itertools import pairwise

import pytest
import torch

from repro.models import create_model, model_options, model_spatial_dims
from repro.models.u2net3d import U2Net3D, compare_to_independent, parameter_domain, parameter_split

SMALL = {"width_mult": 0.25, "levels": 4}
SIZES = [(16, 16, 16), (16, 32, 16)]

pytestmark = pytest.mark.usefixtures("single_thread")


def small_model(in_channels: int = 1, num_classes: int = 3, **options) -> U2Net3D:
    torch.manual_seed(0)
    return U2Net3D(in_channels, num_classes, **{**SMALL, **options})


def meta_model(*args, **options) -> U2Net3D:
    with torch.device("meta"):
        return U2Net3D(*args, **options)


def count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# --- shapes, domains, errors ------------------------------------------------------------------------------------


@pytest.mark.parametrize("domains", [1, 2])
def test_forward_backward_shapes_and_finite(domains):
    model = small_model(domains=domains)
    for domain in range(domains):
        for size in SIZES:
            x = torch.randn(2, 1, *size)
            model.zero_grad()
            output = model.train()(x, domain)
            assert output.shape == (2, 3, *size)
            assert torch.isfinite(output).all()
            output.square().mean().backward()
            for name, parameter in model.named_parameters():
                if parameter_domain(name) in (None, domain):
                    assert parameter.grad is not None, f"{name} receives no gradient"
                    assert torch.isfinite(parameter.grad).all(), name
            with torch.no_grad():
                assert torch.isfinite(model.eval()(x, domain)).all()


def test_domain_attribute_is_the_default_domain():
    model = small_model(domains=2).eval()
    x = torch.randn(1, 1, 16, 16, 16)
    with torch.no_grad():
        first, second = model(x, 0), model(x, 1)
        assert not torch.allclose(first, second)
        assert torch.equal(model(x), first)
        model.domain = 1
        assert torch.equal(model(x), second)
        assert torch.equal(model(x, 0), first)


def test_per_domain_channels_and_classes():
    model = small_model(domains=3, in_channels_per_domain=(1, 2, 1), num_classes_per_domain=(3, 2, 4))
    assert model(torch.randn(1, 2, 16, 16, 16), 1).shape == (1, 2, 16, 16, 16)
    assert model(torch.randn(1, 1, 16, 16, 16), 2).shape == (1, 4, 16, 16, 16)
    with pytest.raises(ValueError, match="domain 1 takes 2 input channels"):
        model(torch.randn(1, 1, 16, 16, 16), 1)


def test_domain_one_batch_leaves_domain_zero_untouched():
    model = small_model(domains=2).train()
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    model.domain = 1
    model(torch.randn(2, 1, 16, 16, 16)).square().mean().backward()

    depthwise = {name: p for name, p in model.named_parameters() if ".depthwise.per_domain." in name}
    assert depthwise, "no channel-wise kernels found"
    for name, parameter in depthwise.items():
        if ".per_domain.0." in name:
            assert parameter.grad is None or not parameter.grad.any(), name
        else:
            assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name
    pointwise = [
        p for name, p in model.named_parameters() if name.endswith(".conv.weight") and p.shape[2:] == (1, 1, 1)
    ]
    assert pointwise, "no shared pointwise kernels found"
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in pointwise)

    optimizer.step()
    changed = {name for name, p in model.named_parameters() if not torch.equal(p, before[name])}
    assert not {name for name in changed if parameter_domain(name) == 0}
    assert {parameter_domain(name) for name in changed} == {None, 1}


def test_separable_unit_is_depthwise_then_pointwise():
    model = small_model(domains=2)
    unit = model.encoder[1].unit1
    width = model.widths[1]
    assert len(unit.depthwise.per_domain) == 2
    depthwise = unit.depthwise.per_domain[0][0]
    assert depthwise.groups == width and depthwise.weight.shape == (width, 1, 3, 3, 3)
    assert unit.conv.weight.shape == (width, width, 1, 1, 1)


def test_bad_input_size_is_a_clear_error():
    model = small_model().eval()
    assert model.size_divisor == 8
    with pytest.raises(ValueError, match="multiples of 8"):
        model(torch.randn(1, 1, 16, 12, 12))
    assert U2Net3D(1, 3).size_divisor == 32  # the official six levels


def test_bad_domain_is_a_clear_error():
    model = small_model(domains=2)
    with pytest.raises(ValueError, match=r"domain must be an int in \[0, 2\)"):
        model(torch.randn(1, 1, 16, 16, 16), 2)
    model.domain = -1
    with pytest.raises(ValueError, match="domain must be"):
        model(torch.randn(1, 1, 16, 16, 16))


@pytest.mark.parametrize(
    "options",
    [
        {"domains": 0},
        {"levels": 1},
        {"conv": "dense"},
        {"init": "xavier"},
        {"width_mult": 0.0},
        {"domains": 2, "num_classes_per_domain": (3,)},
        {"domains": 2, "num_classes_per_domain": (2, 3)},  # entry 0 must be num_classes
        {"domains": 2, "in_channels_per_domain": (1, 0)},
    ],
)
def test_invalid_options_raise(options):
    with pytest.raises(ValueError):
        U2Net3D(1, 3, **options)


def test_registry_and_widths():
    model = create_model("u2net3d", in_channels=1, num_classes=3, domains=2, width_mult=0.5)
    assert isinstance(model, U2Net3D) and model.domains == 2
    assert model_spatial_dims("u2net3d") == 3
    assert {"domains", "width_mult", "levels", "conv", "summed_heads"} <= set(model_options("u2net3d"))
    assert model.widths == (8, 16, 32, 64, 128, 256)
    assert meta_model(1, 3).widths == (16, 32, 64, 128, 256, 512)


def test_official_init():
    model = small_model(init="official", width_mult=1.0)
    conv = model.encoder[3].unit1.conv  # pointwise 128 -> 128
    assert not conv.bias.any()
    assert conv.weight.std().item() == pytest.approx((2 / 128) ** 0.5, rel=0.1)


# --- parameter counts -------------------------------------------------------------------------------------------


def expected_parameters(in_channels, num_classes, widths, *, separable=True, summed_heads=True):
    """(shared, domain-specific) parameter counts, from the widths (one entry of in/num_classes per domain)."""
    domains = len(in_channels)
    levels = len(widths)
    shared = specific = 0

    def unit(c_in, c_out, kernel=3):
        nonlocal shared, specific
        if separable:  # per domain: depthwise 27 * c_in + bias c_in + its norm 2 * c_in; shared pointwise
            specific += domains * (27 * c_in + c_in + 2 * c_in)
            shared += c_in * c_out + c_out
        else:
            shared += kernel**3 * c_in * c_out + c_out
        specific += domains * 2 * c_out  # the domain's norm after the convolution

    specific += sum(27 * c * widths[0] + widths[0] + 2 * widths[0] for c in in_channels)  # input block
    for w in widths:  # residual encoder blocks
        unit(w, w)
        unit(w, w)
    for w, w_next in pairwise(widths):  # stride-2 convolutions and their norms
        shared += 27 * w * w_next + w_next
        specific += domains * 2 * w_next
    for level in range(levels - 1):  # up-sampling unit, then the two decoder units
        w = widths[level]
        unit(widths[level + 1], w)
        unit(2 * w, w)
        unit(w, w, kernel=1)
    for level in (1, 2) if summed_heads else ():
        if level <= levels - 2:  # 1x1x1 convolution with bias and its norm
            specific += sum(widths[level] * n + 3 * n for n in num_classes)
    specific += sum(widths[0] * n + n for n in num_classes)  # output heads
    return shared, specific


OFFICIAL_WIDTHS = (16, 32, 64, 128, 256, 512)

# Counts of the official module (u2net_torch_src/models/u2net3d.py), one input channel and two classes per task
# unless stated, num_pool_per_axis [5, 5, 5] (six levels) unless stated.
OFFICIAL_COUNTS = [
    ({"domains": 1}, 5_998_430),  # universal, one task
    ({"domains": 2}, 6_143_020),  # universal, two tasks
    ({"domains": 5}, 6_576_790),  # universal, five tasks
    ({"conv": "standard"}, 33_113_214),  # independent
    ({"conv": "standard", "levels": 4}, 2_055_166),  # independent with Hippocampus' [3, 3, 3] pools
    ({"conv": "standard", "domains": 5}, 33_152_054),  # shared, five tasks
    # The official universal run: Heart, Liver, Hippocampus, Prostate (2 modalities), Pancreas.
    ({"domains": 5, "in_channels_per_domain": (1, 1, 1, 2, 1), "num_classes_per_domain": (2, 2, 3, 3, 2)}, 6_577_460),
]


@pytest.mark.parametrize(("options", "official"), OFFICIAL_COUNTS)
def test_parameter_count_matches_formula_and_official_code(options, official):
    model = meta_model(1, 2, **options)
    domains = options.get("domains", 1)
    in_channels = options.get("in_channels_per_domain", (1,) * domains)
    num_classes = options.get("num_classes_per_domain", (2,) * domains)
    widths = OFFICIAL_WIDTHS[: options.get("levels", 6)]
    shared, specific = expected_parameters(
        in_channels, num_classes, widths, separable=options.get("conv", "separable") == "separable"
    )
    split = parameter_split(model)
    assert (split.shared, split.domain_specific) == (shared, specific)
    assert count(model) == shared + specific == official


@pytest.mark.parametrize(
    "options",
    [
        {"width_mult": 0.5, "domains": 3},
        {"width_mult": 0.25, "levels": 3, "domains": 2, "summed_heads": False},
        {"levels": 2, "conv": "standard", "domains": 2},
    ],
)
def test_parameter_count_formula_at_other_settings(options):
    model = meta_model(2, 4, **options)
    domains = options["domains"]
    shared, specific = expected_parameters(
        (2,) * domains,
        (4,) * domains,
        model.widths,
        separable=options.get("conv", "separable") == "separable",
        summed_heads=options.get("summed_heads", True),
    )
    assert count(model) == shared + specific


def test_domain_specific_parameters_per_domain():
    split = parameter_split(meta_model(1, 2, domains=2))
    assert split.per_domain == (144_590, 144_590)  # the official increment per added task
    assert split.shared == parameter_split(meta_model(1, 2, domains=5)).shared == 5_853_840


def test_universal_versus_independent_models():
    comparison = compare_to_independent(meta_model(1, 2, domains=2))
    assert comparison.universal == 6_143_020
    assert comparison.independent == (33_113_214, 33_113_214)
    assert comparison.ratio == pytest.approx(6_143_020 / 66_226_428)  # 9.3%
    five = compare_to_independent(meta_model(1, 2, domains=5))
    assert five.ratio == pytest.approx(6_576_790 / (5 * 33_113_214))  # 4.0%
    # Each added domain costs 0.44% of an independent model.
    assert parameter_split(meta_model(1, 2, domains=5)).per_domain[0] / 33_113_214 == pytest.approx(0.004367, abs=1e-5)
