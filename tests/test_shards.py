import os
import signal
import subprocess
import sys
import textwrap

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cocu.curation.core.shards import (
    ShardError,
    ShardWriter,
    expand_shards,
    iter_batches,
    open_parquet,
    remove_stale_temporaries,
    validate_shard,
)
from cocu.curation.core.stage import ShardTask, Stage, run_stage
from cocu.curation.executors.local import LocalExecutor


def make_table(n=10, start=0, **extra):
    data = {
        "key": [f"{start + i:05d}" for i in range(n)],
        "jpg": [bytes([i % 256]) * 8 for i in range(n)],
        "caption": [f"a photo of thing {i}" for i in range(n)],
    }
    data.update(extra)
    return pa.table(data)


def test_round_trip_keeps_extra_columns(tmp_path):
    table = make_table(25, url=[f"http://x/{i}" for i in range(25)])
    with ShardWriter(tmp_path / "a.parquet", table.schema, row_group_size=10) as writer:
        writer.write(table)
    batches = list(iter_batches(tmp_path / "a.parquet", batch_size=7))
    assert [b.num_rows for b in batches] == [7, 7, 7, 4]
    assert pa.Table.from_batches(batches).equals(table)
    assert validate_shard(tmp_path / "a.parquet") == 25


@pytest.mark.parametrize(
    "table, message",
    [
        (make_table().drop(["caption"]), "missing required column 'caption'"),
        (make_table().set_column(2, "caption", pa.array(range(10))), "column 'caption' has type int64"),
        (
            make_table().set_column(0, "key", pa.array(["a", "b", "c", "d", "e", "f", "g", "c", "i", "j"])),
            "row 7: duplicate key 'c'",
        ),
    ],
)
def test_invalid_shard_gives_one_line_naming_file(tmp_path, table, message):
    path = tmp_path / "bad.parquet"
    pq.write_table(table, path)
    with pytest.raises(ShardError) as err:
        validate_shard(path)
    text = str(err.value)
    assert message in text and str(path) in text and "\n" not in text


def test_unreadable_and_truncated_files(tmp_path):
    garbage = tmp_path / "garbage.parquet"
    garbage.write_bytes(b"this is not parquet at all")
    truncated = tmp_path / "truncated.parquet"
    pq.write_table(make_table(1000), tmp_path / "full.parquet")
    truncated.write_bytes((tmp_path / "full.parquet").read_bytes()[:-200])
    for path in (garbage, truncated):
        with pytest.raises(ShardError, match="not a readable Parquet file") as err:
            validate_shard(path)
        assert str(path) in str(err.value)
    with pytest.raises(ShardError, match="no such file"):
        expand_shards(tmp_path / "missing.parquet")
    with pytest.raises(ShardError, match="matches no .parquet file"):
        expand_shards(str(tmp_path / "nothing-*.parquet"))


def test_failed_write_leaves_nothing(tmp_path):
    table = make_table()
    with pytest.raises(RuntimeError):
        with ShardWriter(tmp_path / "out.parquet", table.schema) as writer:
            writer.write(table)
            raise RuntimeError("crash in the middle")
    assert list(tmp_path.iterdir()) == []


def test_killed_write_leaves_no_partial_file(tmp_path):
    script = textwrap.dedent(f"""
        import sys, time, pyarrow as pa
        from cocu.curation.core.shards import ShardWriter
        table = pa.table({{"key": ["k"], "jpg": [b"x"], "caption": ["c"]}})
        with ShardWriter({str(tmp_path / "out.parquet")!r}, table.schema) as writer:
            writer.write(table)
            print("writing", flush=True)
            time.sleep(60)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "writing"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "out.parquet").exists()
    leftovers = [p.name for p in tmp_path.iterdir()]
    assert leftovers and all(name.startswith(".out.parquet.") for name in leftovers)
    assert remove_stale_temporaries(tmp_path) == len(leftovers)
    assert list(tmp_path.iterdir()) == []


def copy_upper(task, params, progress):
    """A tiny stage for the runner tests: upper-case captions."""
    with ShardWriter(task.target, pa.schema([("key", pa.string()), ("caption", pa.string())])) as writer:
        for batch in iter_batches(task.source, batch_size=4, columns=["key", "caption"]):
            captions = [c.upper() if params["upper"] else c for c in batch.column("caption").to_pylist()]
            writer.write(pa.table({"key": batch.column("key"), "caption": captions}))
            progress(batch.num_rows)
    return {"rows": writer.rows}


UPPER = Stage("upper", copy_upper, {"upper": True})


def test_stage_skips_done_shards_and_redoes_changed_ones(tmp_path):
    sources = []
    for i in range(3):
        pq.write_table(make_table(10, start=10 * i), tmp_path / f"in{i}.parquet")
        sources.append(tmp_path / f"in{i}.parquet")
    tasks = [ShardTask(s, tmp_path / "out" / s.name) for s in sources]
    first = run_stage(UPPER, tasks, LocalExecutor(), progress=False)
    assert (first.done, first.skipped, first.counts["rows"]) == (3, 0, 30)
    assert pq.read_table(tasks[0].target).column("caption")[0].as_py() == "A PHOTO OF THING 0"
    again = run_stage(UPPER, tasks, LocalExecutor(), progress=False)
    assert (again.done, again.skipped) == (0, 3)
    pq.write_table(make_table(5, start=100), sources[1])  # changed input: only that shard is redone
    changed = run_stage(UPPER, tasks, LocalExecutor(), progress=False)
    assert (changed.done, changed.skipped) == (1, 2)
    other = run_stage(
        Stage("upper", copy_upper, {"upper": False}), tasks, LocalExecutor(), progress=False
    )  # changed parameters: all redone
    assert other.done == 3


def test_stage_reports_bad_shard_and_finishes_the_others(tmp_path):
    pq.write_table(make_table(10), tmp_path / "good.parquet")
    pq.write_table(make_table(10).drop(["key"]), tmp_path / "bad.parquet")
    tasks = [ShardTask(tmp_path / n, tmp_path / "out" / n) for n in ("bad.parquet", "good.parquet")]
    summary = run_stage(UPPER, tasks, LocalExecutor(workers=2), progress=False)
    assert summary.done == 1 and len(summary.failures) == 1
    assert "bad.parquet" in summary.failures[0] and "missing required column 'key'" in summary.failures[0]
    assert not (tmp_path / "out" / "bad.parquet").exists()


def test_validate_cli_names_each_bad_file(tmp_path):
    pq.write_table(make_table(10), tmp_path / "good.parquet")
    pq.write_table(make_table(10).drop(["jpg"]), tmp_path / "bad.parquet")
    result = subprocess.run(
        [sys.executable, "-m", "cocu.cli.data", "validate", str(tmp_path)], capture_output=True, text=True
    )
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "bad.parquet: missing required column 'jpg'" in errors[0]
    assert "2 shard(s), 10 rows, 1 invalid" in result.stdout


def test_a_relative_folder_with_a_colon_is_a_folder_not_a_uri(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bank-0-6:2").mkdir()
    with ShardWriter(
        "bank-0-6:2/x.parquet", make_table(3).schema
    ) as writer:  # pyarrow alone: "Unrecognized filesystem"
        writer.write(make_table(3))
    assert open_parquet("bank-0-6:2/x.parquet").metadata.num_rows == 3


def fill_the_disk(task: ShardTask, params, progress) -> dict[str, int]:
    from cocu.curation.core.errors import DiskFull

    (task.target.parent / f"{task.source.stem}.tried").write_text("")
    raise DiskFull(task.target)


def test_a_full_disk_stops_the_stage_at_once_and_says_so_once(tmp_path):
    sources = []
    for i in range(4):
        sources.append(tmp_path / f"in{i}.parquet")
        pq.write_table(make_table(4, start=4 * i), sources[-1])
    (tmp_path / "out").mkdir()
    tasks = [ShardTask(s, tmp_path / "out" / s.name) for s in sources]
    summary = run_stage(Stage("full", fill_the_disk, {}), tasks, LocalExecutor(), progress=False)
    assert [p.name for p in (tmp_path / "out").glob("*.tried")] == ["in0.tried"]  # the others were not tried
    first, stop = summary.failures
    assert (
        first.endswith("could not be written: the disk is full; free some space and rerun") or "disk is full" in first
    )
    assert (
        stop == "full: stopped at the full disk, 3 shard(s) not tried; free space and rerun (finished shards are kept)"
    )
