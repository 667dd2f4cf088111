"""SLURM array tasks: each array shape (--array=0-N, 1-N, 0-N:S, a list 1,3,5) maps its tasks onto the slices
0..COUNT-1 from SLURM_ARRAY_TASK_ID/MIN/MAX/STEP/COUNT, or refuses in one line; the tasks of each shape, then
--finalize, give the plain run's bank (and shards) byte for byte."""

from __future__ import annotations

import pytest
from enginekit import same_bank, same_shards

from cocu.curation.core.errors import CocuError
from cocu.curation.core.placement import ShardSlice, slurm_slice
from cocu.curation.executors.config import ExecutorConfig


def array(ids: list[int], step: int | None = 1) -> list[dict[str, str]]:
    """The SLURM_ARRAY_* variables of each task of an array whose task ids are ``ids``."""
    common = {"SLURM_ARRAY_TASK_MIN": min(ids), "SLURM_ARRAY_TASK_MAX": max(ids), "SLURM_ARRAY_TASK_COUNT": len(ids)}
    if step is not None:
        common["SLURM_ARRAY_TASK_STEP"] = step
    return [{k: str(v) for k, v in {**common, "SLURM_ARRAY_TASK_ID": i}.items()} for i in ids]


SHAPES = {
    "0-3": array([0, 1, 2, 3]),
    "1-4": array([1, 2, 3, 4]),
    "0-6:2": array([0, 2, 4, 6], step=2),
    "1,3,5": array([1, 3, 5], step=None),
}


@pytest.mark.parametrize("shape", [*SHAPES, "1,3,5 with STEP=1"])
def test_every_array_shape_maps_its_tasks_onto_every_slice_once(shape):
    tasks = array([1, 3, 5], step=1) if shape == "1,3,5 with STEP=1" else SHAPES[shape]
    slices = [slurm_slice(env) for env in tasks]
    assert sorted(s.index for s in slices) == list(range(len(tasks)))
    assert {s.count for s in slices} == {len(tasks)}


def test_the_stepped_array_of_the_issue_takes_task_4_and_6():
    """--array=0-6:2 gave tasks 4 and 6 the slices 4 and 6 "of 4" before: an error naming a flag never given."""
    assert [slurm_slice(env) for env in SHAPES["0-6:2"]] == [ShardSlice(i, 4) for i in range(4)]


def test_an_irregular_list_is_refused_by_a_task_in_one_line():
    refused = []
    for env in array([1, 2, 5], step=None):
        try:
            slurm_slice(env)
        except CocuError as err:
            refused.append(str(err))
    assert len(refused) >= 1 and all("\n" not in line for line in refused)
    assert "SLURM_ARRAY_TASK_ID=2" in refused[0] and "--shard-index I --num-shards N" in refused[0]
    assert "SLURM_ARRAY_TASK_COUNT=3" in refused[0]


def test_a_task_without_its_count_is_refused():
    with pytest.raises(CocuError, match="SLURM_ARRAY_TASK_COUNT is not set"):
        slurm_slice({"SLURM_ARRAY_TASK_ID": "3"})


def test_flags_win_over_the_array_variables(monkeypatch):
    for name, value in SHAPES["0-6:2"][2].items():
        monkeypatch.setenv(name, value)
    assert ExecutorConfig().part() == ShardSlice(2, 4)
    assert ExecutorConfig(shard_index=0, num_shards=2).part() == ShardSlice(0, 2)


@pytest.mark.slow
@pytest.mark.parametrize("shape", list(SHAPES))
def test_the_tasks_of_each_shape_then_finalize_equal_one_plain_run(shape, world, monkeypatch):
    from cocu.curation.bank.build import build_bank
    from cocu.curation.enrich.curator import EnrichConfig
    from cocu.curation.enrich.run import enrich

    root = world["root"]
    monkeypatch.chdir(root)
    name = shape.replace(":", "s").replace(",", "_")
    bank, out = f"bank-{name}", f"out-{name}"
    for env in SHAPES[shape]:  # each task as the array runs it: the slice comes from the variables alone
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        part = ExecutorConfig().part()
        assert not part.whole
        assert build_bank("world/train", bank, world["config"], progress=False, part=part).ok
    final = build_bank("world/train", bank, world["config"], progress=False, finalize=True)
    assert final.ok and final.embed.done == 0
    same_bank(root / bank, root / "bank-local")
    if shape == "0-6:2":  # enrich needs the finished bank: its array runs after --finalize, as in docs/scale.md
        for env in SHAPES[shape]:
            for name, value in env.items():
                monkeypatch.setenv(name, value)
            part = ExecutorConfig().part()
            assert enrich(bank, "world/train", out, EnrichConfig(batch_size=16), progress=False, part=part).ok
        same_shards(root / out, root / "out-local")
