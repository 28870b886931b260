"""Tests of repro.losses: hand-computed values, minimum, gradients, masking, deep supervision."""

import math

import pytest
import torch

from repro.training.losses import DeepSupervisionLoss, SegmentationLoss

SMOOTH = 1e-5


def centre_square_target() -> torch.Tensor:
    """(1, 4, 4) binary target with the 2x2 centre square as foreground (4 of 16 pixels)."""
    target = torch.zeros(1, 4, 4, dtype=torch.long)
    target[0, 1:3, 1:3] = 1
    return target


def test_binary_dice_term_by_hand() -> None:
    # Zero logits: p = 0.5 everywhere, BCE = ln 2 per pixel whatever the target.
    # Soft Dice: tp = 4 * 0.5 = 2, sum p = 16 * 0.5 = 8, sum t = 4 -> (2*2 + s) / (8 + 4 + s) ~= 1/3.
    logits = torch.zeros(1, 1, 4, 4)
    target = centre_square_target()
    dice = (4 + SMOOTH) / (12 + SMOOTH)
    assert SegmentationLoss(2, dice_weight=0.0)(logits, target).item() == pytest.approx(math.log(2))
    assert SegmentationLoss(2)(logits, target).item() == pytest.approx(math.log(2) + 1 - dice)
    assert SegmentationLoss(2, dice_weight=2.0)(logits, target).item() == pytest.approx(math.log(2) + 2 * (1 - dice))


def test_multiclass_value_by_hand() -> None:
    # Zero logits over 3 classes: p = 1/3 everywhere, CE = ln 3.
    # Class 1 has 4 pixels, class 2 has 8, background 4; 16 pixels in all.
    # Dice_c = (2 n_c / 3) / (16 / 3 + n_c) = 2 n_c / (16 + 3 n_c): class 1 8/28, class 2 16/40.
    # Background is excluded: Dice = (2/7 + 2/5) / 2 = 12/35.
    target = torch.zeros(1, 4, 4, dtype=torch.long)
    target[0, 0] = 1
    target[0, 2:] = 2
    loss = SegmentationLoss(3, smooth=0.0)(torch.zeros(1, 3, 4, 4), target)
    assert loss.item() == pytest.approx(math.log(3) + 1 - 12 / 35)


def test_dice_is_pooled_over_the_batch() -> None:
    # Image 0 as in the binary example, image 1 has an empty target; zero logits everywhere.
    # Batch Dice: tp = 2, sum p = 32 * 0.5 = 16, sum t = 4 -> (4 + s) / (20 + s) ~= 0.2.
    # (Per-image Dice would instead average ~1/3 and ~0.)
    target = torch.cat((centre_square_target(), torch.zeros(1, 4, 4, dtype=torch.long)))
    loss = SegmentationLoss(2)(torch.zeros(2, 1, 4, 4), target)
    assert loss.item() == pytest.approx(math.log(2) + 1 - (4 + SMOOTH) / (20 + SMOOTH))


@pytest.mark.parametrize("num_classes", [2, 4])
def test_perfect_prediction_is_near_the_minimum(num_classes: int) -> None:
    generator = torch.Generator().manual_seed(0)
    target = torch.randint(0, num_classes, (2, 8, 8), generator=generator)
    if num_classes == 2:
        confident = 20.0 * (2 * target - 1).float().unsqueeze(1)
    else:
        confident = 20.0 * torch.nn.functional.one_hot(target, num_classes).permute(0, 3, 1, 2).float()
    loss_fn = SegmentationLoss(num_classes)
    channels = 1 if num_classes == 2 else num_classes
    assert loss_fn(confident, target).item() == pytest.approx(0.0, abs=1e-4)  # the minimum is 0
    assert loss_fn(torch.randn(2, channels, 8, 8, generator=generator), target).item() > 0.5


@pytest.mark.parametrize("num_classes", [2, 3])
def test_gradient_flows_and_matches_channels_last(num_classes: int) -> None:
    generator = torch.Generator().manual_seed(1)
    channels = 1 if num_classes == 2 else num_classes
    target = torch.randint(0, num_classes, (2, 6, 6), generator=generator)
    logits = torch.randn(2, channels, 6, 6, generator=generator, requires_grad=True)
    logits_cl = logits.detach().to(memory_format=torch.channels_last).requires_grad_()
    loss_fn = SegmentationLoss(num_classes)

    loss = loss_fn(logits, target)
    loss.backward()
    loss_cl = loss_fn(logits_cl, target)
    loss_cl.backward()

    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0
    assert loss_cl.item() == pytest.approx(loss.item(), rel=1e-6)
    torch.testing.assert_close(logits_cl.grad, logits.grad)


@pytest.mark.parametrize("num_classes", [2, 3])
def test_valid_mask_excludes_pixels(num_classes: int) -> None:
    generator = torch.Generator().manual_seed(2)
    channels = 1 if num_classes == 2 else num_classes
    target = torch.randint(0, num_classes, (2, 6, 6), generator=generator)
    valid = torch.ones(2, 6, 6, dtype=torch.bool)
    valid[..., 4:] = False  # last two columns are outside the field of view
    target_with_ignore = torch.where(valid, target, 255)
    logits = torch.randn(2, channels, 6, 6, generator=generator, requires_grad=True)
    loss_fn = SegmentationLoss(num_classes)

    loss = loss_fn(logits, target_with_ignore, valid)
    loss.backward()
    changed = logits.detach().clone()
    changed[..., 4:] = 1e4 * torch.randn(2, channels, 6, 2, generator=generator)

    assert loss_fn(changed, target_with_ignore, valid).item() == pytest.approx(loss.item(), rel=1e-6)
    assert (logits.grad[..., 4:] == 0).all()
    # Masking out whole columns is the same as cropping them away.
    assert loss_fn(logits[..., :4], target[..., :4]).item() == pytest.approx(loss.item(), rel=1e-6)


@pytest.mark.parametrize("num_classes", [2, 3])
def test_empty_target_is_finite(num_classes: int) -> None:
    generator = torch.Generator().manual_seed(3)
    channels = 1 if num_classes == 2 else num_classes
    target = torch.zeros(2, 6, 6, dtype=torch.long)
    logits = torch.randn(2, channels, 6, 6, generator=generator, requires_grad=True)
    loss_fn = SegmentationLoss(num_classes)
    loss = loss_fn(logits, target)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()
    # A fully masked batch contributes nothing rather than 0/0.
    nothing_valid = torch.zeros(2, 6, 6, dtype=torch.bool)
    assert loss_fn(logits, target, nothing_valid).item() == pytest.approx(0.0)


def test_deep_supervision_is_the_mean_of_head_losses() -> None:
    generator = torch.Generator().manual_seed(4)
    base = SegmentationLoss(3)
    target = torch.randint(0, 3, (2, 6, 6), generator=generator)
    valid = torch.rand(2, 6, 6, generator=generator) > 0.2
    heads = [torch.randn(2, 3, 6, 6, generator=generator) for _ in range(4)]
    deep = DeepSupervisionLoss(base)

    expected = sum(base(head, target, valid).item() for head in heads) / len(heads)
    assert deep(heads, target, valid).item() == pytest.approx(expected, rel=1e-6)
    assert deep(heads[0], target, valid).item() == pytest.approx(base(heads[0], target, valid).item())
    with pytest.raises(ValueError, match="full resolution"):
        deep([heads[0], heads[1][..., :3, :3]], target, valid)
