"""The ten defects of issue 14 (and its three smaller findings), each reproduced as it was met, then kept fixed."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import torch
from faultkit import (
    MATRIX_RESULTS,
    MODEL,
    MatrixResult,
    add_curated_columns,
    bank_args,
    cli_env,
    data_files,
    fit_args,
)
from typer.testing import CliRunner

from cocu.cli.curate import app as curate_app
from cocu.cli.data import app as data_app
from cocu.cli.train import main as train_main
from cocu.curation.bank.build import build_bank
from cocu.curation.bank.config import BankConfig
from cocu.curation.bank.reader import Bank
from cocu.curation.core.shards import ShardError, write_table
from cocu.curation.enrich.curator import EnrichConfig
from cocu.curation.enrich.run import enrich
from cocu.curation.inputs.synthetic import WorldConfig, generate_world

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def argv(monkeypatch):
    """`train_main(args)` runs in-process; LightningCLI warns when sys.argv holds pytest's arguments."""
    monkeypatch.setattr(sys, "argv", ["cocu-train"])


def _bank_config(faults_world) -> BankConfig:
    """The settings the faults bank was built with."""
    return BankConfig(
        model=MODEL, pretrained=str(faults_world["checkpoint"]), min_count=2, batch_size=16, decode_workers=0
    )


def _invalid_utf8(table: pa.Table, rows: list[int]) -> pa.Table:
    """The table with the captions of ``rows`` replaced by bytes that are not UTF-8 (as a broken scraper writes)."""
    captions = table.column("caption").to_pylist()
    raw = [b"caf\xe9 \xff broken" if i in rows else c.encode() for i, c in enumerate(captions)]
    column = pa.array(raw, pa.binary()).view(pa.string())
    return table.set_column(table.schema.get_field_index("caption"), "caption", column)


# ------------------------------------------------------------------------------------------- 1, 2, 7: fit


def test_1_rerunning_a_finished_fit_is_a_no_op(faults_world, tmp_path, argv, capsys):
    train_main(fit_args(faults_world["curated"], tmp_path, 2))
    capsys.readouterr()
    train_main(fit_args(faults_world["curated"], tmp_path, 2, "--ckpt_path", "last"))  # was: AttributeError '_start'
    assert "fit: 0 steps this run (global step 2)" in capsys.readouterr().out


def test_2_checkpoints_are_written_beside_their_target(faults_world, tmp_path, argv, monkeypatch):
    """With $TMPDIR elsewhere, every write of last.ckpt is staged in the checkpoint folder and renamed in one step."""
    elsewhere = tmp_path / "tmpdir"
    elsewhere.mkdir()
    monkeypatch.setenv("TMPDIR", str(elsewhere))
    monkeypatch.setattr("tempfile.tempdir", None)  # forget the cached default so $TMPDIR counts
    moves: list[tuple[str, str]] = []
    for module, name in ((os, "replace"), (os, "rename"), (shutil, "move")):
        original = getattr(module, name)
        monkeypatch.setattr(
            module,
            name,
            lambda src, dst, *a, _f=original, **k: (moves.append((str(src), str(dst))), _f(src, dst, *a, **k))[1],
        )
    root = tmp_path / "run"
    train_main(fit_args(faults_world["curated"], root, 3))
    into_last = [src for src, dst in moves if dst.endswith("last.ckpt")]
    assert into_last and all(Path(src).parent == root / "checkpoints" for src in into_last)
    assert not list(elsewhere.iterdir())


def test_2_an_interrupted_checkpoint_write_keeps_the_previous_one(tmp_path, monkeypatch):
    from cocu.training.checkpoint import AtomicCheckpointIO

    io, target = AtomicCheckpointIO(), tmp_path / "last.ckpt"
    io.save_checkpoint({"global_step": 1}, target)

    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # the moment a kill would stop the writer

    monkeypatch.setattr(os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"global_step": 2}, target)
    monkeypatch.undo()
    assert io.load_checkpoint(target)["global_step"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]


def test_7_fit_says_one_line_for_a_bad_shard(faults_world, tmp_path, argv, capsys):
    shards = tmp_path / "shards"
    shards.mkdir()
    shutil.copy(next(faults_world["curated"].glob("*.parquet")), shards / "a.parquet")
    pq.write_table(pq.read_table(shards / "a.parquet").drop_columns(["cocu_concepts"]), shards / "b.parquet")
    with pytest.raises(SystemExit) as exit_:
        train_main(fit_args(shards, tmp_path / "run", 2))
    assert exit_.value.code == 1
    assert capsys.readouterr().err.strip().splitlines() == [
        f"error: {shards / 'b.parquet'}: missing required column 'cocu_concepts' (has: key, jpg, caption, width, "
        "height, caption_concepts, cocu_scores, cocu_clusters, cocu_error)"
    ]


def test_7_fit_says_one_line_for_a_shard_that_breaks_in_a_loader_worker(faults_world, tmp_path, argv, capsys):
    """Damage inside a data page (the footer intact) is met by a loader worker, not by the up-front check."""
    shards = tmp_path / "shards"
    shards.mkdir()
    source = next(faults_world["curated"].glob("*.parquet"))
    pq.write_table(pq.read_table(source), shards / "a.parquet", row_group_size=8)
    column = pq.read_metadata(shards / "a.parquet").row_group(2).column(1)  # the jpg column of rows 16..23
    start = column.dictionary_page_offset or column.data_page_offset
    data = bytearray((shards / "a.parquet").read_bytes())
    data[start : start + column.total_compressed_size] = b"\xff" * column.total_compressed_size
    (shards / "a.parquet").write_bytes(bytes(data))
    with pytest.raises(SystemExit) as exit_:
        train_main(fit_args(shards, tmp_path / "run", 2, "--data.num_workers", "1", "--data.batch_size", "4"))
    assert exit_.value.code == 1
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert "Traceback" not in err and len(lines) == 1  # a library's warning may come first: warnings go there
    assert lines[0].startswith(f"error: {shards / 'a.parquet'}: unreadable data after row "), lines


def test_7_fit_says_one_line_for_a_corrupt_last_checkpoint(faults_world, tmp_path, argv, capsys, request):
    last = tmp_path / "checkpoints" / "last.ckpt"
    last.parent.mkdir(parents=True)
    last.write_bytes(b"PK\x03\x04 half a zip")
    with pytest.raises(SystemExit) as exit_:
        train_main(fit_args(faults_world["curated"], tmp_path, 2, "--ckpt_path", "last"))
    assert exit_.value.code == 1
    lines = capsys.readouterr().err.strip().splitlines()
    request.config.stash.setdefault(MATRIX_RESULTS, []).append(MatrixResult("corrupt last.ckpt", "fit", 1, lines[0]))
    assert len(lines) == 1 and lines[0].startswith(f"error: {last}: not a loadable checkpoint")


def test_resume_loads_checkpoints_as_plain_data_only(faults_world, tmp_path, argv, monkeypatch):
    train_main(fit_args(faults_world["curated"], tmp_path, 2))
    calls = []
    original = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: (calls.append(k.get("weights_only")), original(*a, **k))[1])
    train_main(fit_args(faults_world["curated"], tmp_path, 3, "--ckpt_path", "last"))
    assert calls and all(value is True for value in calls)


# ------------------------------------------------------------------------------------------- 3, 4, 5: bank


def test_3_enrich_reuses_an_embedding_only_for_the_same_image(faults_world, tmp_path):
    """Another world's shards share the bank's keys (00000000.., seed 0 vs 7) but not one image."""
    generate_world(tmp_path / "other", WorldConfig(seed=7, train=40, teacher=0, val=0, shard_size=40), progress=False)
    other = tmp_path / "other" / "train" / "00000.parquet"
    renamed = tmp_path / "renamed"
    renamed.mkdir()
    table = pq.read_table(other)
    pq.write_table(
        table.set_column(0, "key", pc.binary_join_element_wise("x-", table.column("key"), "")),
        renamed / "00000.parquet",
    )
    config = EnrichConfig(batch_size=16, decode_workers=0)
    summary = enrich(faults_world["bank"], other, tmp_path / "out", config, progress=False)
    assert summary.ok and summary.counts["reused"] == 0 and summary.counts["embedded"] == 40
    # the curated concepts are those of the row's own picture: the same as when no key matches at all
    alone = enrich(faults_world["bank"], renamed, tmp_path / "out-renamed", config, progress=False)
    assert alone.ok
    columns = ["cocu_concepts", "cocu_scores"]
    assert pq.read_table(tmp_path / "out" / "00000.parquet", columns=columns).equals(
        pq.read_table(tmp_path / "out-renamed" / "00000.parquet", columns=columns)
    )
    # and a shard of the bank's own corpus still reuses every stored embedding
    own_shard = next(faults_world["train"].glob("*.parquet"))
    own = enrich(faults_world["bank"], own_shard, tmp_path / "own", config, progress=False)
    assert own.counts["reused"] == 40 and own.counts["embedded"] == 0


@pytest.mark.parametrize("damaged", ["index.faiss", "embeddings.npy", "images.parquet"])
def test_4_build_bank_repairs_a_damaged_file(faults_world, bank_copy, damaged):
    clean = data_files(faults_world["bank"])
    path = bank_copy / damaged
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    summary = build_bank(faults_world["train"], bank_copy, _bank_config(faults_world), progress=False)
    assert summary.ok and summary.steps_run and "manifest" in summary.steps_run
    assert data_files(bank_copy) == clean
    Bank.open(bank_copy)


def test_4_a_same_size_rewrite_is_found_by_its_checksum(faults_world, bank_copy):
    path = bank_copy / "index.faiss"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    summary = build_bank(faults_world["train"], bank_copy, _bank_config(faults_world), progress=False)
    assert summary.steps_run == ["index", "manifest"]
    assert path.read_bytes() == (faults_world["bank"] / "index.faiss").read_bytes()


def test_5_a_broken_bank_is_reported_once_naming_the_file(faults_world, bank_copy, tmp_path):
    index = bank_copy / "index.faiss"
    index.write_bytes(index.read_bytes()[:100])
    result = CliRunner().invoke(
        curate_app,
        ["enrich", "--bank", str(bank_copy), "--shards", str(faults_world["train"]), "--out", str(tmp_path / "out")],
    )
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {index}: unreadable bank file"), lines
    assert "build-bank" in lines[0]


# ------------------------------------------------------------------------------------------- 6: invalid UTF-8


def test_6_invalid_utf8_captions_are_found_by_validate_and_kept_flagged_by_enrich(faults_world, tmp_path):
    source = next(faults_world["train"].glob("*.parquet"))
    shards = tmp_path / "in"
    shards.mkdir()
    pq.write_table(_invalid_utf8(pq.read_table(source), [3, 17]), shards / "bad.parquet")
    result = CliRunner().invoke(data_app, ["validate", str(shards)])
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines() == [f"error: {shards / 'bad.parquet'}: row 3: caption is not valid UTF-8"]

    summary = enrich(
        faults_world["bank"], shards, tmp_path / "out", EnrichConfig(batch_size=16, decode_workers=0), progress=False
    )
    assert summary.ok and summary.counts["images"] == 40 and summary.counts["errors"] == 2
    out = pq.read_table(tmp_path / "out" / "bad.parquet", columns=["cocu_error", "cocu_concepts"]).to_pylist()
    assert [i for i, row in enumerate(out) if row["cocu_error"]] == [3, 17]
    assert out[3]["cocu_error"] == "caption is not valid UTF-8" and out[3]["cocu_concepts"] == []


def test_6_invalid_utf8_captions_join_the_bank_and_are_skipped_by_fit(faults_world, tmp_path, argv, capsys):
    from cocu.training.data import CuratedShardStream, StreamConfig, scan_shards, text_mode

    shards = tmp_path / "in"
    shards.mkdir()
    for path in sorted(faults_world["train"].glob("*.parquet")):
        pq.write_table(_invalid_utf8(pq.read_table(path), [5]), shards / path.name)
    summary = build_bank(shards, tmp_path / "bank", _bank_config(faults_world), progress=False)
    assert summary.ok and summary.rows == 120 and summary.embed.counts["bad_caption"] == 3

    curated = tmp_path / "curated"
    curated.mkdir()
    for path in sorted(shards.glob("*.parquet")):
        add_curated_columns_raw(path, curated / path.name)
    stream = CuratedShardStream(
        scan_shards(str(curated), text_mode("cocu-top")),
        StreamConfig(text_mode="cocu-top", batch_size=8, image_size=32, context_length=32),
    )
    samples = sum(batch["image"].shape[0] for batch in stream)  # was: UnicodeDecodeError in the loader
    assert samples == len(stream) * 8 and stream.counts["skipped_invalid_caption"] >= 3


def add_curated_columns_raw(source: Path, target: Path) -> None:
    """``add_curated_columns`` for a shard whose captions may not be UTF-8 (their bytes are carried as they are)."""
    table = pq.read_table(source)
    raw = table.column("caption").cast(pa.binary())
    decoded = [b.decode("utf-8", "replace") for b in raw.to_pylist()]
    readable = table.set_column(2, "caption", pa.array(decoded, pa.string()))
    tmp = target.with_name("tmp-" + target.name)
    pq.write_table(readable, tmp)
    add_curated_columns(tmp, target)
    tmp.unlink()
    curated = pq.read_table(target)
    pq.write_table(curated.set_column(2, "caption", table.column("caption")), target)


# ------------------------------------------------------------------------------------------- 8, 9, 10


def test_8_a_second_run_on_the_same_output_folder_is_refused_in_one_line(faults_world, tmp_path, request):
    out = tmp_path / "out"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\nfrom cocu.curation.core.locking import folder_lock\n"
            f"with folder_lock({str(out)!r}):\n    print('held', flush=True)\n    time.sleep(60)",
        ],
        env=cli_env(),
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        result = CliRunner().invoke(
            curate_app,
            ["enrich", "--bank", str(faults_world["bank"]), "--shards", str(faults_world["train"]), "--out", str(out)],
        )
    finally:
        holder.kill()
        holder.wait()
    request.config.stash.setdefault(MATRIX_RESULTS, []).append(
        MatrixResult("two runs, one --out", "enrich", result.exit_code, result.stderr.strip())
    )
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines() == [
        f"error: {out}: in use by another cocu run (pid {holder.pid}); wait for it to finish or choose another "
        "output folder"
    ]
    assert not list(out.glob("*.parquet"))
    # the holder died by SIGKILL: its lock went with it
    assert (
        CliRunner()
        .invoke(
            curate_app,
            ["enrich", "--bank", str(faults_world["bank"]), "--shards", str(faults_world["train"]), "--out", str(out)],
        )
        .exit_code
        == 0
    )


def test_9_outputs_honour_the_umask(tmp_path):
    before = os.umask(0o022)
    try:
        write_table(tmp_path / "shared.parquet", pa.table({"key": ["a"]}))
        os.umask(0o077)
        write_table(tmp_path / "private.parquet", pa.table({"key": ["a"]}))
    finally:
        os.umask(before)
    assert (tmp_path / "shared.parquet").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "private.parquet").stat().st_mode & 0o777 == 0o600


def test_10_synth_rerun_removes_what_a_killed_run_left(tmp_path):
    config = WorldConfig(train=20, teacher=0, val=4, shard_size=10)
    generate_world(tmp_path, config, progress=False)
    clean = data_files(tmp_path)
    left = [
        tmp_path / "train" / ".00001.parquet.1a2b3c4d.tmp",
        tmp_path / "val" / "images" / ".000003.jpg.5e6f7a8b.tmp",
    ]
    for path in left:
        path.write_bytes(b"half")
    (tmp_path / "world.json").unlink()  # the kill came before the world was finished
    generate_world(tmp_path, config, progress=False)
    assert not [p for p in tmp_path.rglob("*.tmp")] and data_files(tmp_path) == clean


# ------------------------------------------------------------------------------------------- also


def test_duplicate_keys_across_shards_are_refused_before_embedding(faults_world, tmp_path):
    shards = tmp_path / "in"
    shards.mkdir()
    first, second = sorted(faults_world["train"].glob("*.parquet"))[:2]
    shutil.copy(first, shards / "a.parquet")
    table = pq.read_table(second)
    keys = table.column("key").to_pylist()
    keys[9] = pq.read_table(first, columns=["key"]).column("key")[4].as_py()
    pq.write_table(table.set_column(0, "key", pa.array(keys)), shards / "b.parquet")
    started = time.perf_counter()
    result = CliRunner().invoke(curate_app, bank_args(shards, tmp_path / "bank", faults_world["checkpoint"]))
    assert result.exit_code == 1
    assert result.stderr.splitlines() == [  # its own line: no progress bar was started
        f"error: {shards / 'b.parquet'}: row 9: key '{keys[9]}' is also in {shards / 'a.parquet'}; "
        "keys must be unique across the corpus"
    ]
    assert not (tmp_path / "bank").exists() and time.perf_counter() - started < 30
    with pytest.raises(ShardError, match="row 9"):
        build_bank(
            shards,
            tmp_path / "bank",
            BankConfig(model=MODEL, pretrained=str(faults_world["checkpoint"])),
            progress=False,
        )


def test_an_undecodable_image_gives_the_same_error_text_every_run():
    """cocu_error is part of the output bytes: Pillow's message names the buffer's memory address, which a rerun
    would not repeat, so a rerun after a kill would differ from a clean run for every shard with such a row."""
    from cocu.curation.bank.images import decode_image

    messages = set()
    for _ in range(3):
        with pytest.raises(ValueError) as err:
            decode_image(b"not an image")
        messages.add(str(err.value))
    assert messages == {"undecodable image (cannot identify image file)"}
