"""Tests of repro.training.metrics against hand-computed 4x4 examples."""

import json
import math

import pytest
import torch

from repro.training.metrics import (
    FN,
    FP,
    TP,
    confusion_counts,
    logits_to_labels,
    per_image_table,
    scores_from_counts,
    summarize,
)

# Binary example. Foreground truth: the 2x2 centre square (4 pixels).
BINARY_TARGET = torch.tensor(
    [
        [0, 0, 0, 0],
        [0, 1, 1, 0],
        [0, 1, 1, 0],
        [0, 0, 0, 0],
    ]
)
# Predicted foreground: (1,1) (1,2) (2,1) hit, (1,3) is a false positive, (2,2) is missed.
BINARY_PRED = torch.tensor(
    [
        [0, 0, 0, 0],
        [0, 1, 1, 1],
        [0, 1, 0, 0],
        [0, 0, 0, 0],
    ]
)

# Three-class example (0 background, 1 top-right square, 2 bottom-left square).
MULTI_TARGET = torch.tensor(
    [
        [0, 0, 1, 1],
        [0, 0, 1, 1],
        [2, 2, 0, 0],
        [2, 2, 0, 0],
    ]
)
MULTI_PRED = torch.tensor(
    [
        [0, 1, 1, 1],
        [0, 0, 1, 2],
        [2, 2, 2, 0],
        [0, 2, 0, 0],
    ]
)


def test_logits_to_labels_binary_thresholds_logit_at_zero() -> None:
    # sigmoid(0) = 0.5 is not > 0.5, so a zero logit is background.
    logits = torch.tensor([-3.0, -0.1, 0.0, 0.1, 4.0]).view(1, 1, 1, 5)
    assert logits_to_labels(logits).tolist() == [[[0, 0, 0, 1, 1]]]


def test_logits_to_labels_multiclass_is_argmax() -> None:
    logits = torch.tensor([[1.0, 0.0], [2.0, 0.0], [0.5, 3.0]]).view(1, 3, 1, 2)
    assert logits_to_labels(logits).tolist() == [[[1, 2]]]


def test_binary_counts_and_scores_by_hand() -> None:
    counts = confusion_counts(BINARY_PRED[None], BINARY_TARGET[None], num_classes=2)
    # Foreground: tp 3, fp 1 (1,3), fn 1 (2,2).
    # Background: the 11 pixels outside those 5 are tp; its fp is the fg miss, its fn the fg false alarm.
    assert counts.tolist() == [[[11, 1, 1], [3, 1, 1]]]

    scores = scores_from_counts(counts)
    # Dice fg = 2*3 / (2*3 + 1 + 1) = 6/8; IoU fg = 3 / (3 + 1 + 1) = 3/5.
    # Dice bg = 22/24; IoU bg = 11/13.
    assert scores["dice"][0].tolist() == pytest.approx([22 / 24, 6 / 8])
    assert scores["iou"][0].tolist() == pytest.approx([11 / 13, 3 / 5])


def test_binary_path_from_one_channel_logits() -> None:
    logits = torch.where(BINARY_PRED.bool(), 2.5, -2.5).float().view(1, 1, 4, 4)
    counts = confusion_counts(logits_to_labels(logits), BINARY_TARGET[None], num_classes=2)
    assert counts[0, 1].tolist() == [3, 1, 1]


def test_multiclass_counts_and_scores_by_hand() -> None:
    counts = confusion_counts(MULTI_PRED[None], MULTI_TARGET[None], num_classes=3)
    # Class 1: hits (0,2) (0,3) (1,2); fp (0,1); fn (1,3) (predicted 2).
    # Class 2: hits (2,0) (2,1) (3,1); fp (1,3) (2,2); fn (3,0) (predicted 0).
    # Class 0: 8 true pixels, hits (0,0) (1,0) (1,1) (2,3) (3,2) (3,3); fp (3,0); fn (0,1) (2,2).
    assert counts.tolist() == [[[6, 1, 2], [3, 1, 1], [3, 2, 1]]]

    scores = scores_from_counts(counts)
    # Dice: class 0 12/15, class 1 6/8, class 2 6/9. IoU: 6/9, 3/5, 3/6.
    assert scores["dice"][0].tolist() == pytest.approx([12 / 15, 6 / 8, 6 / 9])
    assert scores["iou"][0].tolist() == pytest.approx([6 / 9, 3 / 5, 3 / 6])

    (row,) = per_image_table(counts, ["case0"], ["background", "liver", "tumour"])
    class_columns = ["dice_liver", "iou_liver", "dice_tumour", "iou_tumour"]
    assert list(row) == ["id", "dice", "iou", "miou_bg", *class_columns]
    assert row["id"] == "case0"
    assert row["dice"] == pytest.approx((6 / 8 + 6 / 9) / 2)
    assert row["iou"] == pytest.approx((3 / 5 + 3 / 6) / 2)
    assert row["miou_bg"] == pytest.approx((6 / 9 + 3 / 5 + 3 / 6) / 3)
    assert row["dice_tumour"] == pytest.approx(6 / 9)
    assert row["iou_liver"] == pytest.approx(3 / 5)


def test_empty_mask_convention() -> None:
    empty = torch.zeros(4, 4, dtype=torch.long)
    one_pixel = empty.clone()
    one_pixel[0, 0] = 1
    pred = torch.stack((empty, one_pixel, empty))
    target = torch.stack((empty, empty, one_pixel))
    scores = scores_from_counts(confusion_counts(pred, target, num_classes=2))
    # Image 0: nothing predicted, nothing true -> 1 (tp + fp + fn == 0).
    # Image 1: one pixel predicted on an empty truth -> 0 (tp 0, fp 1).
    # Image 2: one true pixel missed -> 0 (tp 0, fn 1).
    assert scores["dice"][:, 1].tolist() == [1.0, 0.0, 0.0]
    assert scores["iou"][:, 1].tolist() == [1.0, 0.0, 0.0]


def test_valid_mask_excludes_pixels_whatever_their_labels() -> None:
    valid = torch.ones(1, 4, 4, dtype=torch.bool)
    valid[0, :, 3] = False  # drop the last column, which holds the false positive (1,3)
    target = BINARY_TARGET[None].clone()
    target[~valid] = 255  # an ignore label outside the mask must not be read
    counts = confusion_counts(BINARY_PRED[None], target, num_classes=2, valid=valid)
    # 12 valid pixels. Foreground: tp 3, fp 0, fn 1 -> Dice 6/7, IoU 3/4.
    # Background: 12 - 4 = 8 tp, fp 1 (the missed fg pixel), fn 0.
    assert counts.tolist() == [[[8, 1, 0], [3, 0, 1]]]
    assert scores_from_counts(counts)["dice"][0, 1].item() == pytest.approx(6 / 7)


def test_counts_match_a_naive_per_pixel_count() -> None:
    generator = torch.Generator().manual_seed(0)
    num_classes = 4
    pred = torch.randint(0, num_classes, (3, 5, 6), generator=generator)
    target = torch.randint(0, num_classes, (3, 5, 6), generator=generator)
    valid = torch.rand(3, 5, 6, generator=generator) > 0.3
    counts = confusion_counts(pred, target, num_classes, valid)
    for image in range(3):
        p, t = pred[image][valid[image]], target[image][valid[image]]
        for c in range(num_classes):
            assert counts[image, c, TP] == ((p == c) & (t == c)).sum()
            assert counts[image, c, FP] == ((p == c) & (t != c)).sum()
            assert counts[image, c, FN] == ((p != c) & (t == c)).sum()


def test_pooled_and_per_case_differ() -> None:
    target = torch.zeros(2, 4, 4, dtype=torch.long)
    pred = torch.zeros(2, 4, 4, dtype=torch.long)
    target[0, :2] = 1  # image 0: 8-pixel structure, found exactly
    pred[0, :2] = 1
    target[1, 0, 0] = 1  # image 1: 1-pixel structure, missed, with one false positive elsewhere
    pred[1, 3, 3] = 1
    counts = confusion_counts(pred, target, num_classes=2)
    summary = summarize(counts, ["background", "lesion"])

    # Per case: Dice (1 + 0) / 2 = 0.5, IoU (1 + 0) / 2 = 0.5.
    assert summary["dice"] == pytest.approx(0.5)
    assert summary["iou"] == pytest.approx(0.5)
    # Pooled: tp 8, fp 1, fn 1 -> Dice 16/18, IoU 8/10.
    assert summary["dice_pooled"] == pytest.approx(16 / 18)
    assert summary["iou_pooled"] == pytest.approx(8 / 10)
    # Background IoU: image 0: 8/8 = 1; image 1: tp 14, fp 1, fn 1 -> 14/16.
    assert summary["miou_bg"] == pytest.approx(((1 + 1) / 2 + (14 / 16 + 0) / 2) / 2)
    assert summary["per_class"] == {"lesion": {"dice": pytest.approx(0.5), "iou": pytest.approx(0.5)}}
    json.dumps(summary)  # plain Python floats only
    scalar_keys = ("dice", "iou", "miou_bg", "dice_pooled", "iou_pooled")
    assert all(isinstance(summary[key], float) for key in scalar_keys)


def test_summary_matches_mean_of_table_rows() -> None:
    generator = torch.Generator().manual_seed(1)
    pred = torch.randint(0, 3, (4, 8, 8), generator=generator)
    target = torch.randint(0, 3, (4, 8, 8), generator=generator)
    counts = confusion_counts(pred, target, num_classes=3)
    names = ["background", "a", "b"]
    rows = per_image_table(counts, [f"img{i}" for i in range(4)], names)
    summary = summarize(counts, names)
    for key in ("dice", "iou", "miou_bg"):
        assert summary[key] == pytest.approx(sum(row[key] for row in rows) / len(rows))
    assert summary["per_class"]["b"]["dice"] == pytest.approx(sum(row["dice_b"] for row in rows) / 4)
    assert math.isfinite(summary["dice_pooled"])


def test_mismatched_class_names_rejected() -> None:
    counts = confusion_counts(BINARY_PRED[None], BINARY_TARGET[None], num_classes=2)
    with pytest.raises(ValueError, match="background"):
        summarize(counts, ["vessel"])
