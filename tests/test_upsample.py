"""repro.models.upsample equals F.interpolate(scale_factor=2, mode="bicubic", align_corners=False), value and
gradient."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from repro.models.upsample import (
    BicubicUpsample2x,
    bicubic_upsample2x,
    bicubic_upsample2x_conv,
    bicubic_upsample2x_matmul,
    interpolation_matrix,
)

TOLERANCE = 1e-5
FORMATS = {"contiguous": torch.contiguous_format, "channels_last": torch.channels_last}
FUNCTIONS = {
    "dispatch": bicubic_upsample2x,
    "conv": bicubic_upsample2x_conv,
    "matmul": bicubic_upsample2x_matmul,
    "module": BicubicUpsample2x(),
}
# Tiny, odd, even and 1xN sizes, and TinyU-Net's decoder inputs (6, 12, 24, 48 at 96x96).
SIZES = [(1, 1), (1, 2), (2, 1), (1, 7), (5, 1), (2, 2), (3, 3), (2, 3), (3, 2), (4, 7), (7, 5), (6, 6), (12, 12)]


def reference(x: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, scale_factor=2, mode="bicubic", align_corners=False)


def value_and_grad(function, x: torch.Tensor, grad_out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x = x.detach().requires_grad_()
    y = function(x)
    (grad,) = torch.autograd.grad(y, x, grad_out)
    return y, grad


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("memory_format", FORMATS.values(), ids=FORMATS.keys())
@pytest.mark.parametrize("function", FUNCTIONS.values(), ids=FUNCTIONS.keys())
@pytest.mark.parametrize("channels", [1, 3, 16])
def test_equals_interpolate(function, memory_format, dtype, channels):
    generator = torch.Generator().manual_seed(channels)
    for height, width in SIZES:
        shape = (2, channels, height, width)
        x = torch.randn(shape, generator=generator, dtype=dtype).contiguous(memory_format=memory_format)
        grad_out = torch.randn(2, channels, 2 * height, 2 * width, generator=generator, dtype=dtype)
        expected, expected_grad = value_and_grad(reference, x, grad_out)
        y, grad = value_and_grad(function, x, grad_out)
        assert y.shape == expected.shape and y.dtype == dtype and grad.dtype == dtype, shape
        torch.testing.assert_close(y, expected, rtol=0, atol=TOLERANCE, msg=lambda m, s=shape: f"{s}: {m}")
        torch.testing.assert_close(grad, expected_grad, rtol=0, atol=TOLERANCE, msg=lambda m, s=shape: f"{s}: {m}")


@pytest.mark.parametrize("memory_format", FORMATS.values(), ids=FORMATS.keys())
def test_tinyunet_shapes(memory_format):
    """The decoder inputs of TinyU-Net at width 0.5 on 96x96 images, batch 16, as the study trains it."""
    generator = torch.Generator().manual_seed(0)
    for shape in [(16, 256, 6, 6), (16, 256, 12, 12), (16, 128, 24, 24), (16, 64, 48, 48)]:
        x = torch.randn(shape, generator=generator).contiguous(memory_format=memory_format)
        grad_out = torch.randn(shape[0], shape[1], 2 * shape[2], 2 * shape[3], generator=generator)
        expected, expected_grad = value_and_grad(reference, x, grad_out)
        y, grad = value_and_grad(bicubic_upsample2x, x, grad_out)
        torch.testing.assert_close(y, expected, rtol=0, atol=TOLERANCE)
        torch.testing.assert_close(grad, expected_grad, rtol=0, atol=TOLERANCE)


def test_keeps_memory_format():
    """Channels-last in gives channels-last out, like F.interpolate, and a channels-last input gradient, unlike
    F.interpolate's contiguous one (which slows the backward of the block below it)."""
    x = torch.randn(2, 8, 5, 6)
    assert bicubic_upsample2x(x).is_contiguous()
    x = x.contiguous(memory_format=torch.channels_last).requires_grad_()
    out = bicubic_upsample2x(x)
    assert out.is_contiguous(memory_format=torch.channels_last) and not out.is_contiguous()
    (grad,) = torch.autograd.grad(out, x, torch.ones_like(out))
    assert grad.is_contiguous(memory_format=torch.channels_last) and not grad.is_contiguous()


def test_non_contiguous_input():
    """A strided view (neither layout) goes through the matrix products and is still exact."""
    x = torch.randn(2, 6, 9, 10)[:, ::2, 1:, ::3]
    torch.testing.assert_close(bicubic_upsample2x(x), reference(x), rtol=0, atol=TOLERANCE)


def test_interpolation_matrix_rows_sum_to_one():
    """Clamped taps add up on the edge columns: every row is a partition of unity, also for size 1."""
    for size in (1, 2, 3, 10):
        matrix = interpolation_matrix(size, torch.float64)
        assert matrix.shape == (2 * size, size)
        torch.testing.assert_close(matrix.sum(1), torch.ones(2 * size, dtype=torch.float64))
    with pytest.raises(ValueError, match="size >= 1"):
        interpolation_matrix(0)


def test_module_adds_no_state():
    """No parameters and no state_dict entries: a model that switches to it keeps its checkpoints' keys."""
    model = nn.Sequential(nn.Conv2d(3, 4, 1), BicubicUpsample2x())
    assert list(model.state_dict()) == ["0.weight", "0.bias"]
    assert not list(model[1].parameters())
    model = model.double()
    assert model[1].kernel.dtype == torch.float64
    x = torch.randn(1, 3, 4, 5, dtype=torch.float64)
    torch.testing.assert_close(model(x), reference(model[0](x)), rtol=0, atol=1e-12)


@pytest.mark.parametrize("function", FUNCTIONS.values(), ids=FUNCTIONS.keys())
def test_rejects_bad_input(function):
    with pytest.raises(ValueError, match=r"\(N, C, H, W\) tensor; got shape \(3, 4, 5\)"):
        function(torch.randn(3, 4, 5))
    with pytest.raises(ValueError, match="floating-point tensor; got torch.int64"):
        function(torch.ones(1, 1, 2, 2, dtype=torch.long))
