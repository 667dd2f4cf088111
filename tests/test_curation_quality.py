import pytest

from cocu.benchmarks.curation_quality import prompt_quality, ranking_quality


def test_ranking_quality_counts_only_new_concepts():
    ranked = [["dog", "grass", "photo", "sky"], ["cup", "mug"]]
    caption = [["dog"], ["cup"]]
    present = [["dog", "grass", "sky", "ball"], ["cup"]]
    at1, at3 = ranking_quality(ranked, caption, present, ks=(1, 3))
    # image 1: new = grass, photo, sky; omitted = grass, sky, ball. image 2: new = mug; omitted = none
    assert at1.precision == pytest.approx(1 / 2) and at1.recall == pytest.approx(1 / 3)
    assert at3.precision == pytest.approx(2 / 4) and at3.recall == pytest.approx(2 / 3)


def test_perfect_and_empty_rankings():
    present = [["a", "b", "c"]]
    perfect = ranking_quality([["b", "c"]], [["a"]], present, ks=(2,))[0]
    assert (perfect.precision, perfect.recall) == (1.0, 1.0)
    empty = ranking_quality([[]], [["a"]], present, ks=(2,))[0]
    assert (empty.precision, empty.recall) == (0.0, 0.0)


def test_prompt_quality():
    scores = prompt_quality(
        [["dog", "grass", "photo"], ["cup"]], [["dog"], ["cup"]], [["dog", "grass", "sky"], ["cup", "mug"]]
    )
    assert scores.precision == pytest.approx(3 / 4)
    assert scores.present_recall == pytest.approx(3 / 5)
    assert scores.omitted_recall == pytest.approx(1 / 3)
    assert scores.per_image == pytest.approx(2.0)
    with pytest.raises(ValueError):
        prompt_quality([["a"]], [], [["a"]])
