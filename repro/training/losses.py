"""Training losses: cross-entropy + soft Dice, and deep supervision over several output heads.

Conventions (see ``SegmentationLoss``):

- Binary task (``num_classes == 2``): one logit channel; BCE-with-logits + soft Dice on sigmoid(logit).
- Multi-class task (``num_classes >= 3``): ``num_classes`` logit channels; cross-entropy + soft Dice on
  the softmax probabilities of the foreground classes.
- Soft Dice is a *batch* Dice (nnU-Net's ``batch_dice=True``, its default for 2D): soft tp / fp / fn are
  summed over the whole batch and all pixels before the ratio, per class, then averaged over the
  foreground classes. Background is excluded from the Dice term.
- The loss is ``ce + dice_weight * (1 - dice)``, so its minimum is 0.
- Images (N, C, H, W) and volumes (N, C, D, H, W) alike: the spatial dims are all that follow the channels.
"""

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class SegmentationLoss(nn.Module):
    """Pixel-wise cross-entropy plus soft Dice, for binary (1 channel) and multi-class logits.

    Why batch Dice: with per-image Dice, an image whose ground truth lacks a class gives a ratio of
    ``smooth / (sum p + smooth)``, which is ~0 as soon as any probability mass is predicted and has
    vanishing gradients: a noisy, badly scaled term. Pooling over the batch makes empty images (common
    in lesion and polyp data, and for absent classes in multi-class data) contribute their false
    positives to a well-defined ratio. This matches nnU-Net's 2D setting.

    Why background is excluded from Dice: background covers most pixels, its Dice is close to 1 from
    the first iterations and would dilute the foreground signal; background is still learnt through the
    cross-entropy term. For the binary task the single channel is the foreground.

    Pixels outside the optional ``valid`` mask contribute nothing: neither to the cross-entropy (which
    is averaged over valid pixels only) nor to the Dice sums, and no gradient reaches their logits.

    Empty targets: the Dice ratio is ``(2 tp + smooth) / (2 tp + fp + fn + smooth)``; with no foreground
    in the batch it is ``smooth / (sum p + smooth)``, finite, and close to 1 when nothing is predicted.

    Args:
        num_classes: number of classes including background (binary: 2, with one logit channel).
        dice_weight: weight of the ``1 - dice`` term; 0 gives plain (B)CE.
        smooth: additive smoothing in numerator and denominator of the Dice ratio (nnU-Net: 1e-5).
    """

    def __init__(self, num_classes: int, dice_weight: float = 1.0, smooth: float = 1e-5) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"num_classes counts background and must be >= 2, got {num_classes}")
        self.num_classes = num_classes
        self.dice_weight = dice_weight
        self.smooth = smooth
        self.expected_channels = 1 if num_classes == 2 else num_classes

    def forward(self, logits: Tensor, target: Tensor, valid: Tensor | None = None) -> Tensor:
        """Compute the loss of one output head.

        Args:
            logits: float (N, C, H, W) or (N, C, D, H, W), any memory format; C == 1 for binary, C ==
                num_classes otherwise.
            target: long (N, H, W) or (N, D, H, W) class indices in 0..num_classes-1 (any value outside
                ``valid``).
            valid: optional bool, the shape of ``target``; False pixels are ignored.

        Returns:
            Scalar tensor ``ce + dice_weight * (1 - soft_dice)``.
        """
        if logits.ndim not in (4, 5) or logits.shape[1] != self.expected_channels:
            raise ValueError(
                f"expected logits (N, {self.expected_channels}, [D,] H, W) for num_classes={self.num_classes}, "
                f"got {tuple(logits.shape)}"
            )
        if target.shape != (logits.shape[0], *logits.shape[2:]):
            raise ValueError(f"target {tuple(target.shape)} does not match logits {tuple(logits.shape)}")
        if valid is not None and valid.shape != target.shape:
            raise ValueError(f"valid {tuple(valid.shape)} must match target {tuple(target.shape)}")

        if valid is not None:
            # Out-of-mask targets may hold an ignore label that CE would reject; any in-range value works
            # because those pixels are masked out below.
            target = torch.where(valid, target, 0)
        # Dice sums run in float32 even when the logits are half precision under autocast.
        logits = logits.float()

        if self.num_classes == 2:
            foreground_logit = logits[:, 0]
            target_fg = target.to(logits.dtype)
            pixel_ce = F.binary_cross_entropy_with_logits(foreground_logit, target_fg, reduction="none")
            prob_fg = torch.sigmoid(foreground_logit).unsqueeze(1)
            truth_fg = target_fg.unsqueeze(1)
        else:
            pixel_ce = F.cross_entropy(logits, target, reduction="none")
            prob_fg = torch.softmax(logits, dim=1)[:, 1:]
            spatial = (1,) * (logits.ndim - 2)
            foreground_classes = torch.arange(1, self.num_classes, device=target.device).view(1, -1, *spatial)
            truth_fg = (target.unsqueeze(1) == foreground_classes).to(prob_fg.dtype)

        if valid is None:
            ce = pixel_ce.mean()
        else:
            # torch.where rather than multiplying by the mask, so that non-finite logits outside the mask
            # cannot leak into the loss as 0 * inf = nan.
            ce = torch.where(valid, pixel_ce, 0.0).sum() / valid.sum().clamp_min(1)
            valid_channel = valid.unsqueeze(1)
            prob_fg = torch.where(valid_channel, prob_fg, 0.0)
            truth_fg = torch.where(valid_channel, truth_fg, 0.0)

        return ce + self.dice_weight * (1.0 - self._batch_dice(prob_fg, truth_fg))

    def _batch_dice(self, prob: Tensor, truth: Tensor) -> Tensor:
        """Soft Dice pooled over batch and pixels per class, averaged over classes.

        Args:
            prob: (N, K, *spatial) foreground probabilities, already zero outside the valid mask.
            truth: (N, K, H, W) one-hot foreground targets, same layout.

        Returns:
            Scalar mean over the K classes of ``(2 tp + smooth) / (sum prob + sum truth + smooth)``
            (the denominator equals ``2 tp + fp + fn + smooth``).
        """
        pooled_dims = (0, *range(2, prob.ndim))
        tp = (prob * truth).sum(dim=pooled_dims)
        denominator = prob.sum(dim=pooled_dims) + truth.sum(dim=pooled_dims)
        return ((2 * tp + self.smooth) / (denominator + self.smooth)).mean()


class DeepSupervisionLoss(nn.Module):
    """Equal-weight average of a base loss over several full-resolution output heads (UNet++ style).

    UNet++ attaches a 1x1 head to every top-row node X^{0,j}, all at input resolution, and trains with
    the plain average of the per-head losses; every head is therefore compared with the same target.
    A single tensor is passed straight to the base loss, so a trainer can always wrap its loss.

    Args:
        base: loss module called as ``base(logits, target, valid)``, e.g. ``SegmentationLoss``.
    """

    def __init__(self, base: nn.Module) -> None:
        super().__init__()
        self.base = base

    def forward(self, logits: Tensor | Sequence[Tensor], target: Tensor, valid: Tensor | None = None) -> Tensor:
        """Average the base loss over the heads.

        Args:
            logits: one (N, C, H, W) tensor, or a non-empty sequence of them (one per head), all at the
                resolution of ``target``.
            target: long (N, H, W) class indices.
            valid: optional bool (N, H, W) mask, shared by all heads.

        Returns:
            Scalar tensor: the mean of the per-head losses.
        """
        if isinstance(logits, Tensor):
            return self.base(logits, target, valid)
        if len(logits) == 0:
            raise ValueError("deep supervision needs at least one head")
        for head in logits:
            if head.shape[2:] != target.shape[1:]:
                raise ValueError(
                    f"head resolution {tuple(head.shape[2:])} differs from target {tuple(target.shape[1:])}; "
                    "UNet++ heads are full resolution"
                )
        return torch.stack([self.base(head, target, valid) for head in logits]).mean()
