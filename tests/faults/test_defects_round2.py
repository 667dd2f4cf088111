"""The nine defects of issue 26 (each command attacked from outside), each reproduced as it was met, then kept fixed."""

from __future__ import annotations

import errno
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import testkit
import torch
from faultkit import (
    MATRIX_RESULTS,
    MODEL,
    REPO,
    MatrixResult,
    bank_args,
    cli_env,
    enrich_args,
    fit_args,
    temporaries,
)
from typer.testing import CliRunner

from cocu.cli.curate import app as curate_app
from cocu.cli.data import app as data_app
from cocu.cli.eval import app as eval_app
from cocu.cli.train import main as train_main

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def argv(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["cocu-train"])


def _errors(output: str) -> list[str]:
    assert "Traceback" not in output, output
    return [line for line in output.splitlines() if line.startswith("error:")]


def _record(request, case: str, stage: str, code: int, lines: list[str]) -> None:
    request.config.stash.setdefault(MATRIX_RESULTS, []).append(
        MatrixResult(case, stage, code, lines[0] if lines else "")
    )


def _one_line(result, request, case: str, stage: str, *parts: str) -> str:
    """The command failed with exit 1 and said one error line holding every part."""
    lines = _errors(result.stderr)
    _record(request, case, stage, result.exit_code, lines)
    assert result.exit_code == 1 and len(lines) == 1, (result.exit_code, result.output)
    for part in parts:
        assert part in lines[0], (part, lines[0])
    return lines[0]


def _shards(tmp_path: Path, faults_world, name: str = "in") -> Path:
    folder = tmp_path / name
    shutil.copytree(faults_world["train"], folder, ignore=shutil.ignore_patterns("*.json"))
    return folder


# ------------------------------------------------------------------------------------------- 1: concurrent show


def test_1_a_second_show_on_one_out_stops_without_touching_the_first(faults_world, tmp_path, request):
    from cocu.evaluation.html import page_folder

    out = tmp_path / "gallery"
    with page_folder(out) as work:  # the first run, still building its folder
        (work / "index.html").write_text("the first run's page")
        result = CliRunner().invoke(curate_app, ["show", "--curated", str(faults_world["curated"]), "--out", str(out)])
        assert work.is_dir() and (work / "index.html").exists()  # was: deleted by the second run's clean-up
    _one_line(result, request, "two shows, one --out", "show", f"{out}", "in use by another cocu run")
    assert (out / "index.html").read_text() == "the first run's page"
    assert not list(tmp_path.glob(".gallery*"))


# ------------------------------------------------------------------------------------------- 2: SIGTERM

SLOW_WRITER = """
import sys, time
import cocu.curation.core.shards as shards
import cocu.curation.show.gallery as gallery

def slow(original):
    def run(*args, **kwargs):
        result = original(*args, **kwargs)
        print("writing", flush=True)
        time.sleep(60)
        return result
    return run

shards.ShardWriter.write = slow(shards.ShardWriter.write)
gallery.write_summary = slow(gallery.write_summary)
from cocu.cli.curate import app
app(args=sys.argv[1:], prog_name="cocu-curate")
"""


@pytest.mark.parametrize("stage", ["build-bank", "enrich", "show"])
def test_2_sigterm_stops_a_curation_command_in_one_line_with_its_temporaries_removed(
    faults_world, tmp_path, stage, request
):
    out = tmp_path / "out"
    args = {
        "build-bank": bank_args(faults_world["train"], out, faults_world["checkpoint"]),
        "enrich": enrich_args(faults_world["bank"], faults_world["train"], out),
        "show": ["show", "--curated", str(faults_world["curated"]), "--out", str(out)],
    }[stage]
    process = subprocess.Popen(
        [sys.executable, "-c", SLOW_WRITER, *args],
        env=cli_env(),
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout.readline().strip() == "writing"  # mid-run: a temporary and the lock exist
        assert temporaries(tmp_path)
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=60)
    finally:
        process.kill()
    lines = _errors(err)
    _record(request, "SIGTERM mid-run", stage, process.returncode, lines)
    assert process.returncode == 143 and len(lines) == 1 and f"{stage} stopped by SIGTERM" in lines[0], (
        process.returncode,
        err,
    )
    assert not temporaries(tmp_path) and not list(tmp_path.rglob("*.lock"))
    if stage == "show":
        assert not out.exists()
    else:
        rerun = CliRunner().invoke(curate_app, args)
        assert rerun.exit_code == 0, rerun.output


def test_2_sigterm_stops_fit_with_a_resumable_checkpoint_and_status_143(faults_world, tmp_path, request):
    root = tmp_path / "run"
    last = root / "checkpoints" / "last.ckpt"
    command = [sys.executable, "-m", "cocu.cli.train", *fit_args(faults_world["curated"], root, 100_000)]
    process = subprocess.Popen(command, env=cli_env(), cwd=REPO, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not last.exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert last.exists(), process.poll()
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=120)
    finally:
        process.kill()
    lines = _errors(err)
    _record(request, "SIGTERM mid-run", "fit", process.returncode, lines)
    assert process.returncode == 143 and len(lines) == 1, (process.returncode, err)  # was: 0, "Received SIGTERM"
    step = torch.load(last, weights_only=True)["global_step"]
    assert lines[0].startswith(f"error: fit stopped by SIGTERM at step {step} of 100000 (checkpoint saved: {last})")
    assert lines[0].endswith("rerun with --ckpt_path last to resume")
    assert not temporaries(root)
    resumed = subprocess.run(
        [
            sys.executable,
            "-m",
            "cocu.cli.train",
            *fit_args(faults_world["curated"], root, step + 1, "--ckpt_path", "last"),
        ],
        env=cli_env(),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr
    assert f"fit: 1 steps this run (global step {step + 1})" in resumed.stdout


# ------------------------------------------------------------------------------------------- 3: large types


def test_3_enrich_takes_large_string_and_large_binary_shards(faults_world, tmp_path, request):
    from cocu.curation.inputs.synthetic import WorldConfig, generate_world

    generate_world(tmp_path / "other", WorldConfig(seed=7, train=20, teacher=0, val=0, shard_size=20), progress=False)
    shards = tmp_path / "in"
    shards.mkdir()
    large = pa.schema([("key", pa.large_string()), ("jpg", pa.large_binary()), ("caption", pa.large_string())])
    sources = [next(faults_world["train"].glob("*.parquet")), tmp_path / "other" / "train" / "00000.parquet"]
    for name, source in zip(("bank.parquet", "fresh.parquet"), sources):  # reused embeddings, and fresh ones
        table = pq.read_table(source)
        pq.write_table(table.select(large.names).cast(large), shards / name)
    result = CliRunner().invoke(curate_app, enrich_args(faults_world["bank"], shards, tmp_path / "out"))
    _record(request, "large_string/large_binary", "enrich", result.exit_code, _errors(result.stderr))
    assert result.exit_code == 0 and not _errors(result.stderr), result.output  # was: ArrowTypeError per shard
    for name, rows in (("bank.parquet", 40), ("fresh.parquet", 20)):
        out = pq.read_table(tmp_path / "out" / name)
        assert out.num_rows == rows and out.column("cocu_error").null_count == rows
    assert "reused 40" in result.stdout and "embedded 20" in result.stdout


# ------------------------------------------------------------------------------------------- 4: stale lock

HOLDER = """
import multiprocessing, os, sys, time
from cocu.curation.core.locking import folder_lock

def decode_worker():  # a DataLoader worker is forked the same way, while the lock is held
    print(os.getpid(), flush=True)  # running: past the fork's own start-up
    time.sleep(60)

with folder_lock(sys.argv[1]):
    multiprocessing.get_context("fork").Process(target=decode_worker).start()
    time.sleep(60)
"""


def test_4_a_kill_of_the_main_process_alone_leaves_no_lock_behind(tmp_path):
    from cocu.curation.core.locking import folder_lock

    out = tmp_path / "out"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(out)], env=cli_env(), stdout=subprocess.PIPE, text=True
    )
    child = int(holder.stdout.readline())
    try:
        holder.kill()  # SIGKILL of the main process only, as the OOM killer does; its forked child lives on
        holder.wait()
        os.kill(child, 0)  # still alive
        with folder_lock(out):  # was: "in use by another cocu run (pid N)" for the dead pid
            pass
    finally:
        os.kill(child, signal.SIGKILL)


# ------------------------------------------------------------------------------------------- 5: overlapping folders


@pytest.mark.parametrize("where", ["the input folder", "inside the input folder"])
def test_5_build_bank_refuses_an_out_that_overlaps_its_shards(faults_world, tmp_path, where, request):
    shards = _shards(tmp_path, faults_world)
    out = shards if where == "the input folder" else shards / "bank"
    before = sorted(p.name for p in shards.iterdir())
    result = CliRunner().invoke(curate_app, bank_args(shards, out, faults_world["checkpoint"]))
    _one_line(result, request, f"--out {where}", "build-bank", f"error: {out}: ", where, "choose an --out outside")
    assert sorted(p.name for p in shards.iterdir()) == before


def test_5_enrich_refuses_to_write_over_its_input_shards(faults_world, tmp_path, request):
    shards = _shards(tmp_path, faults_world)
    before = {p.name: p.read_bytes() for p in shards.iterdir()}
    result = CliRunner().invoke(curate_app, enrich_args(faults_world["bank"], shards, shards))
    _one_line(result, request, "--out equal to --shards", "enrich", f"error: {shards}: is the input folder")
    assert {p.name: p.read_bytes() for p in shards.iterdir()} == before  # was: rewritten in place


def test_5_fit_refuses_a_root_that_holds_its_shards(faults_world, tmp_path, argv, capsys, request):
    shards = tmp_path / "run" / "shards"
    shutil.copytree(faults_world["curated"], shards)
    with pytest.raises(SystemExit) as exit_:
        train_main(fit_args(shards, tmp_path / "run", 2))
    lines = _errors(capsys.readouterr().err)
    _record(request, "root holds the shards", "fit", exit_.value.code, lines)
    assert exit_.value.code == 1 and lines == [
        f"error: {tmp_path / 'run'}: holds the input {shards}; choose an --trainer.default_root_dir outside the "
        "inputs (a rerun would read its own output, or overwrite the input)"
    ]


@pytest.mark.parametrize("stage", ["build-bank", "enrich", "fit"])
def test_5_an_out_holding_files_cocu_did_not_make_is_refused(faults_world, tmp_path, stage, argv, capsys, request):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    if stage == "fit":
        with pytest.raises(SystemExit) as exit_:
            train_main(fit_args(faults_world["curated"], out, 2))
        code, err = exit_.value.code, capsys.readouterr().err
    else:
        args = (
            bank_args(faults_world["train"], out, faults_world["checkpoint"])
            if stage == "build-bank"
            else enrich_args(faults_world["bank"], faults_world["train"], out)
        )
        result = CliRunner().invoke(curate_app, args)
        code, err = result.exit_code, result.stderr
    lines = _errors(err)
    _record(request, "--out holds a user's file", stage, code, lines)
    assert code == 1 and len(lines) == 1 and lines[0].startswith(f"error: {out}: holds notes.txt, which {stage} did")
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]


# ------------------------------------------------------------------------------------------- 6: cocu-eval seg


@pytest.fixture(scope="module")
def eval_world(tmp_path_factory):
    """A world with a small val split and a one-step GroupViT checkpoint of it."""
    from cocu.curation.inputs.synthetic import WorldConfig, generate_world

    root = tmp_path_factory.mktemp("eval")
    generate_world(root / "world", WorldConfig(train=64, teacher=0, val=4, shard_size=64), progress=False)
    argv, sys.argv = sys.argv, ["cocu-train"]
    try:
        train_main(testkit.fit_args(root / "world" / "train", root / "run", "--trainer.max_steps", "1"))
    finally:
        sys.argv = argv
    return root / "world", root / "run" / "checkpoints" / "last.ckpt"


def _seg(eval_world, out: Path, *extra: str):
    world, checkpoint = eval_world
    return CliRunner().invoke(eval_app, testkit.seg_args(checkpoint, "synthetic", world, out, *extra))


def test_6_eval_seg_refuses_a_folder_holding_a_users_pages(eval_world, tmp_path, request):
    out = tmp_path / "mine"
    out.mkdir()
    for name in ("index.html", "results.md"):
        (out / name).write_text(f"my {name}")
    result = _seg(eval_world, out, "--html")
    _one_line(result, request, "--out holds a user's pages", "eval seg", f"error: {out}: holds index.html")
    assert {p.name: p.read_text() for p in out.iterdir()} == {
        "index.html": "my index.html",
        "results.md": "my results.md",
    }


def test_6_a_rerun_with_fewer_overlays_shows_only_its_own(eval_world, tmp_path):
    out = tmp_path / "eval"
    assert _seg(eval_world, out, "--save-images", "3", "--html").exit_code == 0
    assert len(list((out / "overlays").glob("*.png"))) == 3
    rerun = _seg(eval_world, out, "--save-images", "1", "--html")
    assert rerun.exit_code == 0, rerun.output
    assert [p.name for p in (out / "overlays").glob("*.png")] == ["0000_000000.png"]  # was: the 3 of the first run
    assert json.loads((out / "metrics.json").read_text())["overlays"] == 1
    assert "Overlays (1)" in (out / "index.html").read_text()
    assert not [p for p in out.iterdir() if p.name.startswith(".") and p.name != ".cocu.lock"]


# ----------------------------------------------------------------------------------- 7: one line, not a traceback


def test_7_a_full_disk_while_build_bank_writes_the_index_is_one_line(faults_world, tmp_path, monkeypatch, request):
    import faiss

    real = faiss.write_index
    monkeypatch.setattr(faiss, "write_index", lambda index, path: real(index, "/dev/full"))  # ENOSPC, as faiss says it
    out = tmp_path / "bank"
    result = CliRunner().invoke(curate_app, bank_args(faults_world["train"], out, faults_world["checkpoint"]))
    _one_line(result, request, "disk full (index)", "build-bank", f"error: {out / 'index.faiss'}: ", "disk is full")
    assert not (out / "index.faiss").exists() and not temporaries(out) and not (out / "manifest.json").exists()
    monkeypatch.undo()
    assert (
        CliRunner().invoke(curate_app, bank_args(faults_world["train"], out, faults_world["checkpoint"])).exit_code == 0
    )


def test_7_a_full_disk_while_fit_saves_a_checkpoint_is_one_line_and_keeps_the_last(
    faults_world, tmp_path, argv, capsys, monkeypatch, request
):
    train_main(fit_args(faults_world["curated"], tmp_path, 2))
    last = tmp_path / "checkpoints" / "last.ckpt"
    saved = last.read_bytes()
    capsys.readouterr()
    real = torch.save

    def full(obj, target, *args, **kwargs):
        with open("/dev/full", "wb") as handle:  # Python's write on a full disk: OSError ENOSPC
            real(obj, handle, *args, **kwargs)

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(SystemExit) as exit_:
        train_main(fit_args(faults_world["curated"], tmp_path, 4, "--ckpt_path", "last"))
    lines = _errors(capsys.readouterr().err)
    _record(request, "disk full (checkpoint)", "fit", exit_.value.code, lines)
    assert exit_.value.code == 1 and len(lines) == 1 and lines[0].startswith(f"error: {last}: ")
    assert "disk is full" in lines[0]
    assert last.read_bytes() == saved and not temporaries(tmp_path)


def _pickled_checkpoint(folder: Path) -> Path:
    import faultkit

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "pickled.pt"
    torch.save({"state_dict": {}, "code": pathlib.PurePosixPath("a")}, path)  # a class: not weights-only
    (folder / f"{MODEL}.json").write_text(json.dumps(faultkit.TINY))
    return path


def test_7_a_pickled_checkpoint_is_refused_without_unsafe_advice(
    faults_world, eval_world, tmp_path, argv, capsys, request
):
    pickled = _pickled_checkpoint(tmp_path / "ckpt")
    built = CliRunner().invoke(curate_app, bank_args(faults_world["train"], tmp_path / "bank", pickled))
    line = _one_line(built, request, "pickled --pretrained", "build-bank", f"error: {pickled}: ", "pickled")
    evaluated = CliRunner().invoke(eval_app, testkit.seg_args(pickled, "synthetic", eval_world[0], tmp_path / "eval"))
    lines = [line, _one_line(evaluated, request, "pickled --checkpoint", "eval seg", f"error: {pickled}: ")]
    root = tmp_path / "run"
    (root / "checkpoints").mkdir(parents=True)
    shutil.copy(pickled, root / "checkpoints" / "last.ckpt")
    with pytest.raises(SystemExit):
        train_main(fit_args(faults_world["curated"], root, 2, "--ckpt_path", "last"))
    lines += _errors(capsys.readouterr().err)
    assert len(lines) == 3
    for line in lines:
        assert "weights_only" not in line and "can still be loaded" not in line and "pickled" in line, line


def test_7_math_text_in_class_and_concept_names_is_drawn_as_it_is(faults_world, tmp_path):
    import numpy as np

    from cocu.curation.show.gallery import write_gallery
    from cocu.evaluation.visualize import save_overlay

    names = [r"$\frac{$", "cat $5"]
    label = np.zeros((8, 8), np.int64)
    label[4:] = 1
    image = np.zeros((8, 8, 3), np.uint8)
    save_overlay(tmp_path / "overlay.png", image, label, label, names, 255, title=r"$\frac{$")  # was: ValueError
    assert (tmp_path / "overlay.png").stat().st_size > 0
    shards = tmp_path / "curated"
    shards.mkdir()
    table = pq.read_table(next(faults_world["curated"].glob("*.parquet")))
    odd = pa.array([[names[0], names[1]]] * table.num_rows, pa.list_(pa.string()))
    scores = pa.array([[0.9, 0.8]] * table.num_rows, pa.list_(pa.float32()))
    clusters = pa.array([[0, 1]] * table.num_rows, pa.list_(pa.int32()))
    for column, values in (("cocu_concepts", odd), ("cocu_scores", scores), ("cocu_clusters", clusters)):
        table = table.set_column(table.schema.get_field_index(column), column, values)
    pq.write_table(table, shards / "odd.parquet")
    summary = write_gallery(shards, tmp_path / "gallery")
    assert summary.rows == table.num_rows and (tmp_path / "gallery" / "plots" / "added_most.png").exists()


# ------------------------------------------------------------------------------------------- 8: clearer, earlier


def test_8_enrich_refuses_a_negative_seed_and_search_settings_up_front(faults_world, tmp_path, request):
    for option, value in (("--seed", "-1"), ("--ef-search", "-1"), ("--nprobe", "-5")):
        args = [*enrich_args(faults_world["bank"], faults_world["train"], tmp_path / "out"), option, value]
        result = CliRunner().invoke(curate_app, args)
        _one_line(result, request, f"{option} {value}", "enrich", f"{option} {value}: must be")
    assert not (tmp_path / "out").exists()


def test_8_build_bank_refuses_bad_search_settings_and_a_missing_weights_file(faults_world, tmp_path, request):
    base = bank_args(faults_world["train"], tmp_path / "bank", faults_world["checkpoint"])
    for option, value in (("--nprobe", "-5"), ("--ef-search", "-1")):
        result = CliRunner().invoke(curate_app, [*base, option, value])
        _one_line(result, request, f"{option} {value}", "build-bank", f"error: {option} {value}: must be at least 1")
    missing = tmp_path / "nonexistent.pt"
    args = [*base[: base.index("--pretrained") + 1], str(missing), *base[base.index("--pretrained") + 2 :]]
    result = CliRunner().invoke(curate_app, args)
    _one_line(result, request, "--pretrained missing", "build-bank", f"error: {missing}: no such file")
    assert not (tmp_path / "bank").exists()


def test_8_an_out_that_is_a_file_is_named_as_such(faults_world, tmp_path, request):
    out = tmp_path / "bank"
    out.write_text("a file")
    result = CliRunner().invoke(curate_app, bank_args(faults_world["train"], out, faults_world["checkpoint"]))
    _one_line(result, request, "--out is a file", "build-bank", f"error: {out}: is a file, not a folder")


def test_8_two_columns_of_one_name_and_a_huge_key_are_said_plainly(faults_world, tmp_path, request):
    shards = tmp_path / "in"
    shards.mkdir()
    table = pq.read_table(next(faults_world["train"].glob("*.parquet")))
    pq.write_table(table.append_column("caption", table.column("caption")), shards / "two.parquet")
    result = CliRunner().invoke(data_app, ["validate", str(shards)])
    _one_line(result, request, "two caption columns", "validate", "has 2 columns named 'caption'")
    (shards / "two.parquet").unlink()
    huge = "k" * 100_000
    keys = table.column("key").to_pylist()
    keys[0] = keys[1] = huge
    pq.write_table(table.set_column(0, "key", pa.array(keys)), shards / "huge.parquet")
    result = CliRunner().invoke(data_app, ["validate", str(shards)])
    line = _one_line(result, request, "100,000-character key", "validate", "row 1: duplicate key 'kkkk")
    assert len(line) < 400 and "(100000 characters)" in line


def test_8_a_full_disk_in_the_vocabulary_step_or_the_lock_names_the_file(faults_world, tmp_path, monkeypatch, request):
    from cocu.curation.core.locking import folder_lock

    real = Path.write_bytes

    def full(self, data):
        if self.name.startswith(".vocabulary.json."):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(self, data)

    monkeypatch.setattr(Path, "write_bytes", full)
    out = tmp_path / "bank"
    result = CliRunner().invoke(curate_app, bank_args(faults_world["train"], out, faults_world["checkpoint"]))
    _one_line(result, request, "disk full (vocabulary)", "build-bank", f"error: {out / 'vocabulary.json'}: ", "full")
    monkeypatch.undo()

    def no_room(*args):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "pwrite", no_room)
    with pytest.raises((OSError, ValueError)) as err:
        with folder_lock(tmp_path / "locked"):
            pass
    assert str(err.value).startswith(f"{tmp_path / 'locked' / '.cocu.lock'}: ") and "disk is full" in str(err.value)
    assert not (tmp_path / "locked" / ".cocu.lock").exists()


def test_8_an_empty_concept_in_a_vocabulary_file_is_refused(tmp_path):
    from cocu.curation.concepts.vocabulary import Vocabulary

    good = Vocabulary(("cat", "dog"), (3, 2))
    good.save(tmp_path / "vocabulary.json")
    data = json.loads((tmp_path / "vocabulary.json").read_text())
    data["concepts"][1] = " "
    (tmp_path / "bad.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"bad.json: row 1: a concept is empty"):
        Vocabulary.load(tmp_path / "bad.json")


def test_8_results_md_escapes_class_names_that_would_break_its_table():
    from cocu.evaluation.segeval import markdown_table

    preset = {"name": "p", "bg_thresh": None, "short_side": 1, "long_side": 1, "crop": 1, "stride": 1}
    preset |= {"topk": 1, "templates": ["{}"], "source": "-"}
    record = {"dataset": "d", "dataset_title": "D", "preset": preset, "images": 1, "split_size": 1}
    record |= {"miou": 1.0, "pixel_accuracy": 1.0, "mean_accuracy": 1.0, "images_per_second": 1, "device": "cpu"}
    record |= {"classes_counted": 2, "per_class_iou": {"a|b": 1.0, "c\nd": 2.0}}
    record["per_class_accuracy"] = {"a|b": 1.0, "c\nd": 2.0}
    lines = markdown_table(record).splitlines()
    assert "| a\\|b | 1.00 | 1.00 |" in lines and "| c d | 2.00 | 2.00 |" in lines  # was: "| a|b |", a broken row


# ------------------------------------------------------------------------------------------- 9: the browser test


def test_9_the_browser_test_fails_under_ci_when_no_chromium_can_be_had(tmp_path):
    env = {
        **cli_env(CI="true", PLAYWRIGHT_BROWSERS_PATH=str(tmp_path / "none")),
        "PATH": str(Path(sys.executable).parent),
    }
    env.pop("COCU_CHROMIUM", None)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            str(REPO / "tests" / "test_gallery_browser.py"),
        ],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode != 0 and "no Chromium" in result.stdout, result.stdout[-2000:]  # was: skipped, exit 0
    assert " skipped" not in result.stdout.splitlines()[-1]
