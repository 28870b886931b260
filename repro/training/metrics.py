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
            for name, dice, iou in zip(class_names[1:], class_dice[1:].tolist(), class_iou[1:].tolist(), strict=True)
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


# --- The UNet++ paper's IoU (Zhou et al., DLMIA 2018): the official Keras ``mean_iou`` metric, re-implemented. ---

# ``np.arange(0.5, 1.0, 0.05)`` exactly as the official code builds it (0.5, 0.55, 0.6000000000000001, ..., 0.95...):
# ten thresholds. They are compared in float32 (see ``keras_mean_iou``).
KERAS_MEAN_IOU_THRESHOLDS: tuple[float, ...] = tuple(np.arange(0.5, 1.0, 0.05).tolist())

# Images counted at a time when the whole set is one batch, to bound the (images, thresholds, pixels) mask in memory.
_IMAGES_PER_CHUNK = 256


def _tf14_two_class_miou(counts: Tensor) -> Tensor:
    """TensorFlow 1.4.1's ``tf.metrics.mean_iou(..., num_classes=2)`` value from two-class confusion counts.

    Args:
        counts: (..., 4) holding tp, fp, fn, tn of the foreground class (tn is the background's tp).

    Returns:
        float64 (...): the mean of the background and foreground IoU. A class whose union is empty (absent from
        both truth and prediction) gets IoU 0 and still counts in the mean (TF 1.4.1 sets a zero denominator to 1
        and takes ``reduce_mean`` over both classes; TF >= 1.5 later dropped such classes from the mean). This is
        unlike ``scores_from_counts``, which scores an empty class 1.
    """
    tp, fp, fn, tn = counts.double().unbind(dim=-1)
    errors = fp + fn
    iou_fg = tp / (tp + errors).clamp_min(1)
    iou_bg = tn / (tn + errors).clamp_min(1)
    return (iou_fg + iou_bg) / 2


def _threshold_counts(probabilities: Tensor, truth: Tensor, thresholds: Tensor) -> Tensor:
    """Per image and threshold: tp, fp, fn, tn of ``probabilities > threshold`` against ``truth``.

    Args:
        probabilities: float32 (N, P), pixels flattened.
        truth: bool (N, P).
        thresholds: float32 (T,).

    Returns:
        LongTensor (N, T, 4).
    """
    pixels = truth.shape[1]
    positives = truth.sum(dim=1, keepdim=True)  # (N, 1)
    chunks = []
    for start in range(0, truth.shape[0], _IMAGES_PER_CHUNK):
        prob = probabilities[start : start + _IMAGES_PER_CHUNK]
        true = truth[start : start + _IMAGES_PER_CHUNK]
        predicted = prob[:, None, :] > thresholds[None, :, None]  # (n, T, P)
        tp = (predicted & true[:, None, :]).sum(dim=2)
        predicted_positive = predicted.sum(dim=2)
        fp = predicted_positive - tp
        fn = positives[start : start + _IMAGES_PER_CHUNK] - tp
        tn = pixels - tp - fp - fn
        chunks.append(torch.stack((tp, fp, fn, tn), dim=-1))
    return torch.cat(chunks, dim=0)


def keras_mean_iou(
    probabilities: Tensor | np.ndarray,
    masks: Tensor | np.ndarray,
    thresholds: Sequence[float] = KERAS_MEAN_IOU_THRESHOLDS,
    batch_size: int | None = None,
) -> float:
    """The IoU of the UNet++ paper's tables: the official Keras ``mean_iou`` metric, as ``model.evaluate`` reports it.

    Official definition: ``mean_iou(y_true, y_pred)`` in ``keras/helper_functions.py`` of MrGiovanni/UNetPlusPlus
    (HEAD 2659ddc26976d2e4062722c58013aa2213ba5e29; the same function is in ``model.py`` of the first code commit,
    3520269, 2018-08-02). The README and ``keras/requirements.txt`` pin Keras 2.2.2 and TensorFlow 1.4.1. For each
    t in ``np.arange(0.5, 1.0, 0.05)`` it binarises the sigmoid output as ``y_pred > t`` and takes
    ``tf.metrics.mean_iou(y_true, y_pred > t, 2)``, a streaming two-class (background and foreground) mean IoU. It
    then returns the mean of the ten values. So it is a mean IoU over both classes averaged over thresholds, not the
    foreground IoU. The metric function was taken from a public Kaggle DSB2018 starter kernel.

    How the official code accumulates:

    - Each threshold's ``tf.metrics.mean_iou`` sums a 2x2 confusion matrix over every pixel of every image in a
      batch. Its local variables are zeroed once, when ``model.compile`` calls the metric
      (``K.get_session().run(tf.local_variables_initializer())``). Keras 2.2.2 never resets them, because a
      function metric is not stateful. So each batch's value is the mIoU of the counts summed over all batches
      since compile, with the current batch included.
    - Keras 2.2.2's ``test_loop`` (``model.evaluate``) averages those per-batch values, each weighted by its
      batch's image count, over contiguous batches of ``batch_size`` in order.
    - In TF 1.4.1 a class with an empty union scores IoU 0 and still counts in the two-class mean (see
      ``_tf14_two_class_miou``).
    - Labels are cast to int64, so a mask value in (0, 1) would be background. Here masks must be 0/1.

    With ``batch_size=None`` (or a batch of all images) the result is the whole-set value: a freshly compiled model
    evaluated in one batch. With a smaller ``batch_size`` it is the running-value average that ``model.evaluate``
    prints right after compile. The official BRATS2013 script evaluates that way (reload the best checkpoint,
    compile, predict, evaluate). The result depends on the batch size and order. If the metric ran after
    training batches in the same compiled session (e.g. ``val_mean_iou`` in fit logs), those batches' counts
    would be in it as well. That case is not modelled here.

    Deviations:

    - ``y_pred > t`` is done in float32, as TF did for a float32 model output. The probabilities and the
      float64 thresholds are cast to float32, so a probability of 0.7 is not above the threshold 0.7000000000000002.
    - The IoU arithmetic is float64 here. TF 1.4.1 divides in float32, which differs by about 1e-7.
    - TF reads the streaming value and applies the batch's update with no enforced order, because the
      ``tf.identity`` under ``control_dependencies`` only orders the identity op. So the official per-batch value
      could in principle omit the current batch. The value after the update is used here, which is what the code
      intends.

    Args:
        probabilities: (N, H, W) (or (N, ...)) foreground probabilities in [0, 1] (the sigmoid output).
        masks: binary ground truth of the same shape, values 0 and 1 (bool, int or float).
        thresholds: binarisation thresholds. The default is the official ten. ``(0.5,)`` gives the plain mIoU
            (``two_class_miou``).
        batch_size: the ``batch_size`` given to ``model.evaluate``. None means one batch of all N images.

    Returns:
        The metric as a Python float in [0, 1] (the paper prints it x100).
    """
    probabilities = torch.as_tensor(probabilities)
    masks = torch.as_tensor(masks)
    if probabilities.shape != masks.shape or probabilities.ndim < 2:
        raise ValueError(
            f"probabilities {tuple(probabilities.shape)} and masks {tuple(masks.shape)} must both be (N, H, W) "
            "or (N, ...)"
        )
    num_images = probabilities.shape[0]
    if num_images == 0:
        raise ValueError("cannot score zero images")
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"batch_size must be >= 1 or None, got {batch_size}")
    if len(thresholds) == 0:
        raise ValueError("at least one threshold is needed")
    if not ((masks == 0) | (masks == 1)).all():
        raise ValueError("masks must be binary (0 / 1)")
    probabilities = probabilities.to(torch.float32)
    if not ((probabilities >= 0) & (probabilities <= 1)).all():
        raise ValueError("probabilities must lie in [0, 1] (NaN is refused too)")

    truth = masks.reshape(num_images, -1).bool()
    flat = probabilities.reshape(num_images, -1)
    cuts = torch.tensor(list(thresholds), dtype=torch.float32, device=flat.device)
    per_image = _threshold_counts(flat, truth, cuts)  # (N, T, 4)

    batch = num_images if batch_size is None else min(batch_size, num_images)
    batch_ends = list(range(batch, num_images, batch)) + [num_images]
    # Streaming state after each batch: counts summed over all images up to the batch's end.
    running = per_image.cumsum(dim=0)[torch.tensor(batch_ends) - 1]  # (B, T, 4)
    per_batch = _tf14_two_class_miou(running).mean(dim=1)  # (B,) mean over thresholds
    sizes = torch.tensor(np.diff([0, *batch_ends]), dtype=torch.float64)
    return float((per_batch.cpu() * sizes).sum() / num_images)


def two_class_miou(probabilities: Tensor | np.ndarray, masks: Tensor | np.ndarray, threshold: float = 0.5) -> float:
    """Plain two-class mean IoU, i.e. (background IoU + foreground IoU) / 2, pooled over all pixels of all images.

    This is ``tf.metrics.mean_iou(masks, probabilities > threshold, 2)`` on one batch with TF 1.4.1's conventions:
    ``keras_mean_iou`` with the single threshold given and ``batch_size=None``.
    """
    return keras_mean_iou(probabilities, masks, thresholds=(threshold,))
