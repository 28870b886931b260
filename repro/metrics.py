"""Segmentation metrics: confusion counts per image and class, Dice / IoU, per-image and dataset summaries.

The pipeline is ``logits_to_labels`` -> ``confusion_counts`` (once per batch, in the hot path; the
per-batch results are concatenated along dim 0) -> ``scores_from_counts`` / ``per_image_table`` /
``summarize`` (once per evaluation).

Class index 0 is background. ``num_classes`` always counts background, so a binary task has
``num_classes == 2`` even though its model has a single output channel.

Empty-mask convention (applies to Dice and IoU alike, per image and per class): if a class is absent
from both the prediction and the ground truth (tp + fp + fn == 0) the score is 1, because the
prediction is exactly right; if the class is absent from the ground truth but predicted
(tp == 0, fp > 0) the score is 0, which follows from the formulas without a special case.
"""

import warnings
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

# Column order of the last dimension of the counts tensor.
TP, FP, FN = 0, 1, 2


def logits_to_labels(logits: Tensor) -> Tensor:
    """Turn network logits into a predicted class-index map.

    Args:
        logits: (N, C, H, W) or (N, C, D, H, W). C == 1 for a binary task (sigmoid output), C >= 3 for a
            multi-class task (softmax output).

    Returns:
        LongTensor (N, H, W) or (N, D, H, W). Binary: 1 where sigmoid(logit) > 0.5, i.e. logit > 0 (no sigmoid needed).
        Multi-class: argmax over channels.
    """
    if logits.ndim not in (4, 5):
        raise ValueError(f"expected logits of shape (N, C, [D,] H, W), got {tuple(logits.shape)}")
    if logits.shape[1] == 1:
        return (logits[:, 0] > 0).long()
    return logits.argmax(dim=1)


def confusion_counts(pred: Tensor, target: Tensor, num_classes: int, valid: Tensor | None = None) -> Tensor:
    """Count true positives, false positives and false negatives per image and per class.

    All images are counted in one scatter-add over the flattened index
    ``image * C*C + target * C + pred``; pixels outside ``valid`` go to one extra bin that is dropped.
    Unlike ``bincount`` or boolean indexing this needs no device-to-host synchronisation on a GPU.

    Args:
        pred: LongTensor (N, H, W) or, for volumes, (N, D, H, W) of predicted class indices in 0..num_classes-1.
        target: LongTensor of ``pred``'s shape, ground-truth class indices in 0..num_classes-1 (values outside
            ``valid`` are not read, so they may be anything, e.g. an ignore label).
        num_classes: number of classes including background (binary task: 2).
        valid: optional BoolTensor of ``pred``'s shape; pixels where it is False are excluded from all counts.

    Returns:
        LongTensor (N, num_classes, 3) holding tp, fp, fn (indices ``TP``, ``FP``, ``FN``) for every
        image and class. Counts of several batches can be concatenated along dim 0.
    """
    if pred.shape != target.shape or pred.ndim not in (3, 4):
        raise ValueError(
            f"pred {tuple(pred.shape)} and target {tuple(target.shape)} must both be (N, H, W) or (N, D, H, W)"
        )
    if valid is not None and valid.shape != target.shape:
        raise ValueError(f"valid {tuple(valid.shape)} must match target {tuple(target.shape)}")
    if num_classes < 2:
        raise ValueError(f"num_classes counts background and must be >= 2, got {num_classes}")

    num_images = target.shape[0]
    cells_per_image = num_classes * num_classes
    spatial = (1,) * (target.ndim - 1)
    image_offset = torch.arange(num_images, device=target.device).view(-1, *spatial) * cells_per_image
    cell = image_offset + target.long() * num_classes + pred.long()
    discard_bin = num_images * cells_per_image
    if valid is not None:
        cell = torch.where(valid, cell, discard_bin)
    cell = cell.reshape(-1)

    histogram = torch.zeros(discard_bin + 1, dtype=torch.long, device=target.device)
    histogram.scatter_add_(0, cell, torch.ones(1, dtype=torch.long, device=target.device).expand_as(cell))
    # confusion[n, t, p]: pixels of image n with ground truth t predicted as p.
    confusion = histogram[:-1].view(num_images, num_classes, num_classes)

    tp = confusion.diagonal(dim1=1, dim2=2)
    fp = confusion.sum(dim=1) - tp  # predicted as the class, truth is another class
    fn = confusion.sum(dim=2) - tp  # truth is the class, predicted as another class
    return torch.stack((tp, fp, fn), dim=-1)


def scores_from_counts(counts: Tensor) -> dict[str, Tensor]:
    """Dice and IoU from confusion counts, with the module's empty-mask convention.

    Dice = 2 tp / (2 tp + fp + fn), IoU = tp / (tp + fp + fn). Both empty (tp + fp + fn == 0) -> 1;
    predicted on an empty ground truth (tp == 0, fp > 0) -> 0.

    Args:
        counts: LongTensor (..., num_classes, 3) of tp, fp, fn, as returned by ``confusion_counts``
            (or summed over images for pooled scores).

    Returns:
        ``{"dice": Tensor, "iou": Tensor}``, float64, each of shape ``counts.shape[:-1]``.
    """
    tp, fp, fn = counts.double().unbind(dim=-1)
    errors = fp + fn
    empty = (tp + errors) == 0
    # clamp only guards the 0/0 of empty cases, which torch.where then replaces by 1.
    dice = torch.where(empty, 1.0, 2 * tp / (2 * tp + errors).clamp_min(1))
    iou = torch.where(empty, 1.0, tp / (tp + errors).clamp_min(1))
    return {"dice": dice, "iou": iou}


def _check_class_names(counts: Tensor, class_names: Sequence[str]) -> None:
    if counts.ndim != 3 or counts.shape[-1] != 3:
        raise ValueError(f"expected counts of shape (N, num_classes, 3), got {tuple(counts.shape)}")
    if len(class_names) != counts.shape[1]:
        raise ValueError(
            f"{len(class_names)} class names for {counts.shape[1]} classes (names must include background)"
        )


def per_image_table(counts: Tensor, ids: Sequence[str], class_names: Sequence[str]) -> list[dict]:
    """One row of scores per image, ready for ``pandas.DataFrame(rows)`` or a CSV writer.

    Args:
        counts: LongTensor (N, num_classes, 3) from ``confusion_counts``.
        ids: N image identifiers, in the order of ``counts``.
        class_names: num_classes names, background first.

    Returns:
        N dicts with keys ``id``, ``dice``, ``iou`` (means over foreground classes), ``miou_bg`` (mean IoU
        over all classes, background included), then ``dice_<name>``, ``iou_<name>`` for each
        foreground class. Scores are Python floats.
    """
    _check_class_names(counts, class_names)
    if len(ids) != counts.shape[0]:
        raise ValueError(f"{len(ids)} ids for {counts.shape[0]} images")
    scores = scores_from_counts(counts)
    dice_fg, iou_fg = scores["dice"][:, 1:], scores["iou"][:, 1:]
    summary_columns = torch.stack((dice_fg.mean(dim=1), iou_fg.mean(dim=1), scores["iou"].mean(dim=1)), dim=1)
    # One transfer to Python instead of one .item() per cell.
    summary_rows = summary_columns.tolist()
    dice_rows, iou_rows = dice_fg.tolist(), iou_fg.tolist()

    rows = []
    for image_id, (dice, iou, miou_bg), class_dice, class_iou in zip(
        ids, summary_rows, dice_rows, iou_rows, strict=True
    ):
        row: dict = {"id": image_id, "dice": dice, "iou": iou, "miou_bg": miou_bg}
        for name, dice_c, iou_c in zip(class_names[1:], class_dice, class_iou, strict=True):
            row[f"dice_{name}"] = dice_c
            row[f"iou_{name}"] = iou_c
        rows.append(row)
    return rows


def summarize(counts: Tensor, class_names: Sequence[str]) -> dict:
    """Dataset-level scores.

    Per-case scores (``dice``, ``iou``, ``miou_bg``, ``per_class``) average the per-image values, so
    every image weighs the same regardless of its size or lesion area; this is what most papers report.
    Pooled scores (``dice_pooled``, ``iou_pooled``) sum tp / fp / fn over all images first (micro
    average), so large structures dominate; they differ from per-case whenever images differ.

    Args:
        counts: LongTensor (N, num_classes, 3) from ``confusion_counts``, N >= 1.
        class_names: num_classes names, background first.

    Returns:
        JSON-serialisable dict of Python floats: ``dice``, ``iou`` (per-case, mean over foreground
        classes), ``miou_bg`` (per-case, mean IoU over all classes incl. background), ``dice_pooled``,
        ``iou_pooled`` (pooled per class, then mean over foreground classes), and
        ``per_class: {name: {"dice": float, "iou": float}}`` (per-case) for each foreground class.
    """
    _check_class_names(counts, class_names)
    if counts.shape[0] == 0:
        raise ValueError("cannot summarize zero images")
    per_case = scores_from_counts(counts)
    class_dice = per_case["dice"].mean(dim=0)
    class_iou = per_case["iou"].mean(dim=0)
    pooled = scores_from_counts(counts.sum(dim=0))

    return {
        "dice": class_dice[1:].mean().item(),
        "iou": class_iou[1:].mean().item(),
        "miou_bg": class_iou.mean().item(),
        "dice_pooled": pooled["dice"][1:].mean().item(),
        "iou_pooled": pooled["iou"][1:].mean().item(),
        "per_class": {
            name: {"dice": dice, "iou": iou}
            for name, dice, iou in zip(
                class_names[1:], class_dice[1:].tolist(), class_iou[1:].tolist(), strict=True
            )
        },
    }


def hausdorff95(pred: Tensor, target: Tensor, class_names: Sequence[str]) -> list[dict]:
    """95th-percentile Hausdorff distance per case and foreground class, in voxels, by MONAI's metric (the
    field's maintained implementation); for volumes, whose boundaries a Dice score does not see.

    A case whose prediction or ground truth lacks a class has no distance for it: NaN there (MONAI gives inf or
    NaN), so that means over cases (``nanmean``) use the cases where the distance exists.

    Args:
        pred: LongTensor (N, D, H, W) of predicted class indices.
        target: LongTensor (N, D, H, W) of ground-truth class indices.
        class_names: names, background first.

    Returns:
        N dicts ``{"hd95": mean over foreground classes, "hd95_<name>": ...}``.
    """
    from monai.metrics import compute_hausdorff_distance

    num_classes = len(class_names)
    one_hot = [F.one_hot(x.long(), num_classes).movedim(-1, 1) for x in (pred, target)]
    with warnings.catch_warnings():  # MONAI warns for every empty class; the NaN below says it
        warnings.simplefilter("ignore")
        distances = compute_hausdorff_distance(*one_hot, include_background=False, percentile=95).double()
    distances = torch.where(torch.isfinite(distances), distances, torch.nan)
    rows = []
    for case in distances.tolist():
        row = {"hd95": float(np.nanmean(case)) if not np.isnan(case).all() else float("nan")}
        row |= {f"hd95_{name}": value for name, value in zip(class_names[1:], case, strict=True)}
        rows.append(row)
    return rows
