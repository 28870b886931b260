"""Tests of repro.training.metrics.keras_mean_iou, the UNet++ paper's IoU (official Keras ``mean_iou``), by hand."""

import numpy as np
import pytest
import torch

from repro.training.metrics import KERAS_MEAN_IOU_THRESHOLDS, keras_mean_iou, two_class_miou


def _reference(probabilities: np.ndarray, masks: np.ndarray, batch_size: int | None = None) -> float:
    """Brute-force re-statement with explicit loops over batches, thresholds and 2x2 confusion matrices."""
    n = len(probabilities)
    size = n if batch_size is None else batch_size
    confusion = np.zeros((len(KERAS_MEAN_IOU_THRESHOLDS), 2, 2))  # [threshold, truth, prediction], streaming
    total = 0.0
    for start in range(0, n, size):
        p, y = probabilities[start : start + size], masks[start : start + size]
        values = []
        for k, t in enumerate(KERAS_MEAN_IOU_THRESHOLDS):
            pred = (p.astype(np.float32) > np.float32(t)).astype(int).ravel()
            for truth_value, pred_value in zip(y.astype(int).ravel(), pred, strict=True):
                confusion[k, truth_value, pred_value] += 1
            ious = []
            for c in (0, 1):
                union = confusion[k, c, :].sum() + confusion[k, :, c].sum() - confusion[k, c, c]
                ious.append(confusion[k, c, c] / union if union > 0 else 0.0)
            values.append(np.mean(ious))
        total += np.mean(values) * len(p)
    return total / n


# 2x2 example. Foreground truth: the top row.
PROBS_2X2 = np.array([[[0.9, 0.7], [0.4, 0.6]]])
MASK_2X2 = np.array([[[1, 1], [0, 0]]])


def test_thresholds_are_the_official_ten() -> None:
    assert len(KERAS_MEAN_IOU_THRESHOLDS) == 10
    assert KERAS_MEAN_IOU_THRESHOLDS == pytest.approx([0.5 + 0.05 * i for i in range(10)])


def test_2x2_by_hand_per_threshold() -> None:
    # A probability p is foreground at threshold t iff p > t (in float32: 0.6 is not above 0.6000000000000001).
    # t = 0.5, 0.55: foreground {0.9, 0.7, 0.6}: tp 2, fp 1, fn 0, tn 1 -> fg 2/3, bg 1/2 -> 7/12.
    # t = 0.6, 0.65: foreground {0.9, 0.7} = truth -> 1.
    # t = 0.7 .. 0.85 (4 thresholds): foreground {0.9}: tp 1, fn 1, tn 2 -> fg 1/2, bg 2/3 -> 7/12.
    # t = 0.9, 0.95: nothing: fn 2, tn 2 -> fg 0, bg 1/2 -> 1/4.
    expected = (6 * 7 / 12 + 2 * 1.0 + 2 * 0.25) / 10
    assert expected == pytest.approx(0.6)
    assert keras_mean_iou(PROBS_2X2, MASK_2X2) == pytest.approx(0.6, abs=1e-12)
    assert keras_mean_iou(torch.tensor(PROBS_2X2, dtype=torch.float32), torch.tensor(MASK_2X2)) == pytest.approx(0.6)


def test_two_class_miou_at_half_is_the_first_threshold_of_the_2x2_case() -> None:
    assert two_class_miou(PROBS_2X2, MASK_2X2) == pytest.approx(7 / 12)
    assert two_class_miou(PROBS_2X2, MASK_2X2, threshold=0.65) == pytest.approx(1.0)


def test_probability_counts_as_foreground_only_below_it() -> None:
    # 0.7 is foreground for t in 0.5, 0.55, 0.6, 0.65 (perfect: 1) and background for the six others
    # (fg IoU 0, bg IoU 1/2 -> 1/4).
    probs = np.array([[[0.7, 0.0]]])
    mask = np.array([[[1, 0]]])
    assert keras_mean_iou(probs, mask) == pytest.approx((4 * 1.0 + 6 * 0.25) / 10)


def test_threshold_comparison_is_float32_like_tensorflow() -> None:
    # A float32 model output of 0.6 is 0.6000000238..., above the float64 threshold 0.6000000000000001 but equal
    # to it in float32, where TF compares: background. The same holds for 0.55 and 0.8 at their thresholds.
    mask = np.array([[[1, 0]]])
    for value, k in ((0.55, 1), (0.6, 2), (0.8, 6)):
        probs = np.array([[[value, 0.0]]], dtype=np.float32)
        assert float(probs[0, 0, 0]) > KERAS_MEAN_IOU_THRESHOLDS[k]
        assert two_class_miou(probs, mask, threshold=KERAS_MEAN_IOU_THRESHOLDS[k]) == pytest.approx(0.25)


def test_perfect_prediction_is_one() -> None:
    mask = np.array([[[0, 1, 1], [0, 0, 1]], [[1, 0, 0], [0, 0, 0]]])
    assert keras_mean_iou(mask.astype(float), mask) == pytest.approx(1.0)
    assert keras_mean_iou(mask.astype(float), mask, batch_size=1) == pytest.approx(1.0)


def test_all_background_prediction_scores_half_the_background_iou() -> None:
    # 1 of 4 pixels is foreground, none predicted: fg IoU 0, bg IoU 3/4 at every threshold.
    mask = np.array([[[0, 1], [0, 0]]])
    assert keras_mean_iou(np.zeros((1, 2, 2)), mask) == pytest.approx(3 / 8)


def test_empty_class_scores_zero_as_in_tf_1_4() -> None:
    # No foreground in truth or prediction: TF 1.4.1 gives the empty class IoU 0 (not 1) and keeps it in the mean.
    assert keras_mean_iou(np.zeros((2, 3, 3)), np.zeros((2, 3, 3), dtype=int)) == pytest.approx(0.5)


def test_whole_set_pools_pixels_rather_than_averaging_images() -> None:
    # Image A: perfect, 1 fg of 4. Image B: the only fg pixel missed (fn 1, tn 3), at every threshold.
    probs = np.array([[[1.0, 0.0], [0.0, 0.0]], [[0.0, 0.0], [0.0, 0.0]]])
    mask = np.array([[[1, 0], [0, 0]], [[1, 0], [0, 0]]])
    # Pooled: tp 1, fn 1, fp 0, tn 6 -> fg 1/2, bg 6/7.
    pooled = (1 / 2 + 6 / 7) / 2
    per_image_mean = (1.0 + (0 + 3 / 4) / 2) / 2
    assert keras_mean_iou(probs, mask) == pytest.approx(pooled)
    assert pooled != pytest.approx(per_image_mean)


def test_batches_average_running_values_weighted_by_batch_size() -> None:
    # Same two images, plus C: an all-background image predicted all foreground (fp 4).
    probs = np.array([[[1.0, 0.0], [0.0, 0.0]], [[0.0, 0.0], [0.0, 0.0]], [[1.0, 1.0], [1.0, 1.0]]])
    mask = np.array([[[1, 0], [0, 0]], [[1, 0], [0, 0]], [[0, 0], [0, 0]]])
    after_a = 1.0
    after_ab = (1 / 2 + 6 / 7) / 2
    after_abc = (1 / 6 + 6 / 11) / 2  # tp 1, fn 1, fp 4, tn 6: fg 1/(1+1+4), bg 6/(6+1+4)
    assert keras_mean_iou(probs, mask, batch_size=1) == pytest.approx((after_a + after_ab + after_abc) / 3)
    assert keras_mean_iou(probs, mask, batch_size=2) == pytest.approx((2 * after_ab + 1 * after_abc) / 3)
    assert keras_mean_iou(probs, mask, batch_size=3) == pytest.approx(after_abc)
    assert keras_mean_iou(probs, mask, batch_size=99) == pytest.approx(keras_mean_iou(probs, mask))


@pytest.mark.parametrize("batch_size", [None, 1, 3, 4, 7])
def test_matches_brute_force_reference_on_random_data(batch_size: int | None) -> None:
    rng = np.random.default_rng(0)
    probs = rng.random((7, 5, 6))
    masks = (rng.random((7, 5, 6)) < 0.3).astype(np.uint8)
    assert keras_mean_iou(probs, masks, batch_size=batch_size) == pytest.approx(
        _reference(probs, masks, batch_size), abs=1e-12
    )


def test_rejects_bad_inputs() -> None:
    probs, mask = np.zeros((1, 2, 2)), np.zeros((1, 2, 2))
    with pytest.raises(ValueError, match="binary"):
        keras_mean_iou(probs, mask + 0.5)
    with pytest.raises(ValueError, match="must both be"):
        keras_mean_iou(probs, np.zeros((1, 2, 3)))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        keras_mean_iou(probs + 2, mask)
    with pytest.raises(ValueError, match="batch_size"):
        keras_mean_iou(probs, mask, batch_size=0)
    with pytest.raises(ValueError, match="zero images"):
        keras_mean_iou(np.zeros((0, 2, 2)), np.zeros((0, 2, 2)))
