"""mmseg mIoU semantics: sums over the split, ignore index, reduce_zero_label, absent classes left out."""

import math

import numpy as np
import pytest
import torch

from cocu.evaluation.metrics import SegMetric, prepare_label


def brute_force(pairs, num_classes, ignore_index=255, reduce_zero=False):
    """Per image, per class, with boolean masks: the definition, written the slow way."""
    inter = np.zeros(num_classes, dtype=np.int64)
    union = np.zeros(num_classes, dtype=np.int64)
    labelled = np.zeros(num_classes, dtype=np.int64)
    for pred, label in pairs:
        label = label.astype(np.int64)
        if reduce_zero:
            label = np.where(label == 0, 255, np.where(label == 255, 255, label - 1))
        valid = label != ignore_index
        for c in range(num_classes):
            p, g = (pred == c) & valid, (label == c) & valid
            inter[c] += (p & g).sum()
            union[c] += (p | g).sum()
            labelled[c] += g.sum()
    iou = [inter[c] / union[c] * 100 if union[c] else math.nan for c in range(num_classes)]
    counted = [v for v in iou if not math.isnan(v)]
    return sum(counted) / len(counted), inter.sum() / labelled.sum() * 100, iou


@pytest.mark.parametrize("reduce_zero", [False, True])
def test_metric_equals_brute_force_on_random_predictions(reduce_zero):
    rng = np.random.default_rng(0)
    num_classes = 7
    pairs = []
    for _ in range(12):
        h, w = rng.integers(5, 40, size=2)
        label = rng.integers(0, num_classes + int(reduce_zero), size=(h, w)).astype(np.uint8)
        label[rng.random((h, w)) < 0.1] = 255
        # predictions agree with the truth on half the pixels, so IoUs are neither 0 nor 100
        truth = prepare_label(label, reduce_zero).numpy()
        pred = np.where(
            rng.random((h, w)) < 0.5, np.clip(truth, 0, num_classes - 1), rng.integers(0, num_classes, (h, w))
        )
        pairs.append((pred, label))
    metric = SegMetric(num_classes, ignore_index=255, reduce_zero_label=reduce_zero)
    for pred, label in pairs:
        metric.update(pred, label)
    scores = metric.compute()
    miou, acc, iou = brute_force(pairs, num_classes, reduce_zero=reduce_zero)
    assert scores.miou == pytest.approx(miou, abs=1e-9)
    assert scores.pixel_accuracy == pytest.approx(acc, abs=1e-9)
    assert np.allclose(scores.iou, iou, equal_nan=True)
    assert scores.images == 12 and 0 < scores.miou < 100


def test_batched_update_equals_per_image_updates():
    rng = np.random.default_rng(1)
    preds = rng.integers(0, 5, size=(4, 16, 16))
    labels = rng.integers(0, 5, size=(4, 16, 16)).astype(np.uint8)
    labels[:, 0] = 255
    one, batched = SegMetric(5), SegMetric(5)
    for p, g in zip(preds, labels):
        one.update(p, g)
    batched.update(torch.from_numpy(preds), torch.from_numpy(labels))
    assert one.compute() == batched.compute()


def test_sums_over_the_split_not_mean_of_images():
    # image A: class 0 perfect on 1 pixel; image B: class 0 wrong on 99 pixels
    # -> IoU over the split 1/100, not (100+0)/2
    metric = SegMetric(2)
    metric.update(np.array([[0]]), np.array([[0]], dtype=np.uint8))
    metric.update(np.ones((9, 11), dtype=np.int64), np.zeros((9, 11), dtype=np.uint8))
    iou = metric.compute().iou
    assert iou[0] == pytest.approx(100 / 100)
    assert iou[1] == 0.0


def test_known_cases_perfect_disjoint_and_absent_class():
    label = np.array([[0, 0, 1], [1, 2, 2]], dtype=np.uint8)
    perfect = SegMetric(4)  # class 3 never occurs: left out of the mean
    perfect.update(label.astype(np.int64), label)
    scores = perfect.compute()
    assert scores.miou == 100.0 and scores.pixel_accuracy == 100.0
    assert math.isnan(scores.iou[3]) and scores.classes_counted == 3

    disjoint = SegMetric(4)
    disjoint.update((label.astype(np.int64) + 1) % 3, label)
    assert disjoint.compute().miou == 0.0 and disjoint.compute().pixel_accuracy == 0.0

    predicted_only = SegMetric(4)  # a class predicted but absent from the truth counts (union > 0), with IoU 0
    pred = label.astype(np.int64)
    pred[0, 0] = 3
    predicted_only.update(pred, label)
    assert predicted_only.compute().classes_counted == 4 and predicted_only.compute().iou[3] == 0.0


def test_ignore_index_pixels_do_not_count_and_reduce_zero_label_drops_class_zero():
    label = np.array([[255, 1, 2, 0]], dtype=np.uint8)
    pred = np.array([[1, 0, 1, 0]])
    reduced = SegMetric(2, reduce_zero_label=True)  # ADE: raw 0 ignored, 1 -> 0, 2 -> 1
    reduced.update(pred, label)
    scores = reduced.compute()
    assert scores.pixels == 2 and scores.iou == (100.0, 100.0)

    imagenet_s = SegMetric(3, ignore_index=1000)
    imagenet_s.update(np.array([[0, 2, 2]]), np.array([[1000, 2, 1]], dtype=np.int32))
    assert imagenet_s.compute().pixels == 2 and imagenet_s.compute().iou[2] == 50.0


def test_to_dict_names_classes_and_turns_nan_into_null():
    metric = SegMetric(3)
    metric.update(np.array([[0, 1]]), np.array([[0, 1]], dtype=np.uint8))
    record = metric.compute().to_dict(["a", "b", "c"])
    assert record["per_class_iou"] == {"a": 100.0, "b": 100.0, "c": None}
    assert record["miou"] == 100.0 and record["classes_counted"] == 2
    with pytest.raises(ValueError):
        metric.compute().to_dict(["a"])
