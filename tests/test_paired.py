"""The benchmark's statistics: mIoU from per-image areas, and the paired bootstrap of a difference."""

import numpy as np
import pytest
import torch

from cocu.benchmarks.paired import PerImage, hierarchical_bootstrap, mean_std, miou, paired_bootstrap
from cocu.evaluation.metrics import SegMetric


def _evaluation(rng: np.random.Generator, labels: np.ndarray, accuracy: float) -> PerImage:
    """Per-image areas of predictions that copy the label with probability ``accuracy``, else a random class."""
    metric_rows = {"intersect": [], "union": []}
    for label in labels:
        wrong = rng.random(label.shape) > accuracy
        pred = np.where(wrong, rng.integers(0, 4, label.shape), label)
        metric = SegMetric(4)
        metric.update(pred, label)
        metric_rows["intersect"].append(metric.intersect.numpy())
        metric_rows["union"].append(metric.union.numpy())
    names = np.array([f"{i:03d}" for i in range(len(labels))])
    return PerImage(names, np.stack(metric_rows["intersect"]), np.stack(metric_rows["union"]))


@pytest.fixture(scope="module")
def labels() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 4, size=(60, 8, 8))


def test_miou_of_summed_areas_is_what_segmetric_computes(labels):
    rng = np.random.default_rng(1)
    run = _evaluation(rng, labels, 0.6)
    metric = SegMetric(4)
    metric.intersect, metric.union = torch.from_numpy(run.intersect.sum(0)), torch.from_numpy(run.union.sum(0))
    metric.pred_area = metric.label_area = torch.ones(4, dtype=torch.int64)
    assert miou(run.intersect.sum(0), run.union.sum(0)) == pytest.approx(metric.compute().miou)


def test_a_clearly_better_mode_has_an_interval_above_zero(labels):
    rng = np.random.default_rng(2)
    better = [_evaluation(rng, labels, 0.8) for _ in range(3)]
    worse = [_evaluation(rng, labels, 0.4) for _ in range(3)]
    result = paired_bootstrap(better, worse, resamples=500)
    assert result["mean"] > 20 and 0 < result["ci95"][0] <= result["mean"] <= result["ci95"][1]
    assert result["includes_zero"] is False and result["seeds"] == [3, 3] and result["images"] == 60


def test_the_same_predictions_differ_by_exactly_zero(labels):
    run = _evaluation(np.random.default_rng(3), labels, 0.5)
    result = paired_bootstrap([run], [run], resamples=200)
    assert result["mean"] == 0.0 and result["ci95"] == [0.0, 0.0] and result["includes_zero"] is True


def test_runs_on_different_images_cannot_be_paired(labels):
    run = _evaluation(np.random.default_rng(4), labels, 0.5)
    shifted = PerImage(np.roll(run.names, 1), run.intersect, run.union)
    with pytest.raises(ValueError, match="not evaluated on the same images"):
        paired_bootstrap([run], [shifted])


def test_mean_and_sample_std():
    assert mean_std([1.0, 2.0, 3.0]) == (2.0, 1.0) and mean_std([4.0]) == (4.0, 0.0)


def _width(interval) -> float:
    return interval["ci95"][1] - interval["ci95"][0]


def test_the_hierarchical_interval_widens_when_seeds_disagree_and_is_the_image_one_when_they_agree(labels):
    rng = np.random.default_rng(5)
    baseline = _evaluation(rng, labels, 0.6)
    agreeing = _evaluation(rng, labels, 0.7)
    same = hierarchical_bootstrap([agreeing] * 3, [baseline] * 3, resamples=500)
    images_only = paired_bootstrap([agreeing] * 3, [baseline] * 3, resamples=500)
    assert same["ci95"] == images_only["ci95"] and same["mean"] == images_only["mean"]
    # three seeds of one mode that disagree (accuracy 0.5, 0.7, 0.9): the seeds' spread joins the interval
    disagreeing = [_evaluation(rng, labels, accuracy) for accuracy in (0.5, 0.7, 0.9)]
    spread = hierarchical_bootstrap(disagreeing, [baseline] * 3, resamples=500)
    narrow = paired_bootstrap(disagreeing, [baseline] * 3, resamples=500)
    assert spread["mean"] == narrow["mean"] and _width(spread) > 2 * _width(narrow)
    assert spread["seeds"] == [3, 3] and spread["images"] == 60 and spread["resamples"] == 500


def test_the_hierarchical_bootstrap_gives_each_class_group_its_own_interval(labels):
    rng = np.random.default_rng(6)
    better = [_evaluation(rng, labels, 0.8) for _ in range(2)]
    worse = [_evaluation(rng, labels, 0.4) for _ in range(2)]
    result = hierarchical_bootstrap(better, worse, resamples=300, groups={"things": [0, 1]})
    things = result["things"]
    expected = np.mean([miou(r.intersect[:, :2].sum(0), r.union[:, :2].sum(0)) for r in better]) - np.mean(
        [miou(r.intersect[:, :2].sum(0), r.union[:, :2].sum(0)) for r in worse]
    )
    assert things["mean"] == pytest.approx(expected, abs=1e-3)
    assert things["ci95"][0] <= things["mean"] <= things["ci95"][1] and things["includes_zero"] is False
    with pytest.raises(ValueError, match="not evaluated on the same images"):
        hierarchical_bootstrap(better, [PerImage(np.roll(worse[0].names, 1), worse[0].intersect, worse[0].union)])
