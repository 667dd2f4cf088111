"""The bad-input matrix: every stage fed what an operator's bad day brings, through its CLI.

Row-level damage (images that do not decode, bombs, null or non-UTF-8 captions, odd image modes) must keep every row:
rows in = rows out, the row flagged in ``cocu_error`` (or counted by build-bank), exit 0. File-level damage (missing
or mistyped columns, duplicate keys, truncated or empty Parquet) must fail that file alone: exit 1, one line naming
the file (and row where there is one), no visible partial output. The conftest prints the matrix at the end.
"""

from __future__ import annotations

import io
import re
import struct
import sys
import zlib
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from faultkit import MATRIX_RESULTS, MatrixResult, add_curated_columns, bank_args, enrich_args, fit_args
from PIL import Image
from typer.testing import CliRunner

from cocu.cli.curate import app as curate_app
from cocu.cli.data import app as data_app
from cocu.cli.train import main as train_main

pytestmark = pytest.mark.usefixtures("one_torch_thread")
BAD_ROW = 3


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _bomb() -> bytes:
    """A PNG whose header claims 30000 x 30000 pixels (over Pillow's bomb limit) with next to no data."""
    data = bytearray(_png(Image.new("L", (1, 1))))
    ihdr = data.index(b"IHDR")
    data[ihdr + 4 : ihdr + 12] = struct.pack(">II", 30000, 30000)
    data[ihdr + 17 : ihdr + 21] = struct.pack(">I", zlib.crc32(bytes(data[ihdr : ihdr + 17])))
    return bytes(data)


def _jpeg(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG")
    return buffer.getvalue()


ODD_MODES = [
    _jpeg(Image.new("CMYK", (40, 30), (10, 200, 30, 0))),
    _png(Image.new("P", (33, 17), 5)),
    _png(Image.new("LA", (20, 20), (100, 50))),
    _png(Image.new("I;16", (24, 24), 40000)),
    _png(Image.new("RGBA", (16, 48), (1, 2, 3, 0))),
    _png(Image.new("1", (50, 50), 1)),
]


def _set(table: pa.Table, column: str, rows: dict[int, object], type_: pa.DataType) -> pa.Table:
    values = table.column(column).to_pylist()
    for row, value in rows.items():
        values[row] = value
    return table.set_column(table.schema.get_field_index(column), column, pa.array(values, type_))


def _not_utf8(table: pa.Table) -> pa.Table:
    raw = [c.encode() for c in table.column("caption").to_pylist()]
    raw[BAD_ROW] = b"\xff\xfe a broken caption"
    return table.set_column(2, "caption", pa.array(raw, pa.binary()).view(pa.string()))


# name -> (make the bad table from a good one, the row error enrich writes (None: the row is curated))
ROW_CASES: dict[str, tuple[Callable[[pa.Table], pa.Table], str | None]] = {
    "undecodable image": (
        lambda t: _set(t, "jpg", {BAD_ROW: b"this is not an image"}, pa.binary()),
        "undecodable image",
    ),
    "truncated image": (
        lambda t: _set(t, "jpg", {BAD_ROW: t.column("jpg")[BAD_ROW].as_py()[:300]}, pa.binary()),
        "undecodable image",
    ),
    "bomb image": (lambda t: _set(t, "jpg", {BAD_ROW: _bomb()}, pa.binary()), "undecodable image"),
    "null image": (lambda t: _set(t, "jpg", {BAD_ROW: None}, pa.binary()), "no image (null jpg)"),
    "null caption": (lambda t: _set(t, "caption", {BAD_ROW: None}, pa.string()), None),
    "invalid UTF-8 caption": (_not_utf8, "caption is not valid UTF-8"),
    "odd image modes": (lambda t: _set(t, "jpg", dict(enumerate(ODD_MODES, BAD_ROW)), pa.binary()), None),
}


def _duplicate_within(table: pa.Table) -> pa.Table:
    return _set(table, "key", {BAD_ROW: table.column("key")[0].as_py()}, pa.string())


# name -> (write the bad shard beside the good one a.parquet, the expected message with its row if any)
FILE_CASES: dict[str, tuple[Callable[[pa.Table, Path], None], str]] = {
    "missing column": (
        lambda t, p: pq.write_table(t.drop_columns(["caption"]), p),
        "missing required column 'caption'",
    ),
    "mistyped column": (
        lambda t, p: pq.write_table(t.set_column(2, "caption", pa.array(range(t.num_rows))), p),
        "column 'caption' has type int64",
    ),
    "duplicate key within a shard": (
        lambda t, p: pq.write_table(_duplicate_within(t), p),
        "row 3: duplicate key 'b-000000000'",
    ),
    "duplicate key across shards": (lambda t, p: pq.write_table(t, p), "row 0: key '000000000' is also in"),
    "truncated Parquet": (lambda t, p: p.write_bytes(_parquet_bytes(t)[:-200]), "not a readable Parquet file"),
    "zero-byte Parquet": (lambda t, p: p.write_bytes(b""), "not a readable Parquet file"),
}


def _parquet_bytes(table: pa.Table) -> bytes:
    buffer = pa.BufferOutputStream()
    pq.write_table(table, buffer)
    return buffer.getvalue().to_pybytes()


def _record(request, case: str, stage: str, code: int, message: str) -> None:
    request.config.stash.setdefault(MATRIX_RESULTS, []).append(MatrixResult(case, stage, code, message))


def _errors(output: str) -> list[str]:
    assert "Traceback" not in output
    return [line for line in output.splitlines() if line.startswith("error:")]


def _visible(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith(".")) if folder.exists() else []


@pytest.fixture
def good(faults_world) -> pa.Table:
    return pq.read_table(sorted(faults_world["train"].glob("*.parquet"))[0])


@pytest.mark.parametrize("case", list(ROW_CASES))
def test_row_damage_keeps_every_row(faults_world, good, tmp_path, case, request):
    make, error = ROW_CASES[case]
    shards = tmp_path / "in"
    shards.mkdir()
    bad = shards / "bad.parquet"
    pq.write_table(make(good), bad)
    runner = CliRunner()

    checked = runner.invoke(data_app, ["validate", str(shards)])
    lines = _errors(checked.stderr)
    _record(request, case, "validate", checked.exit_code, lines[0] if lines else "")
    if case == "invalid UTF-8 caption":  # the contract says UTF-8: validate names the row, the stages keep it
        assert checked.exit_code == 1 and lines == [f"error: {bad}: row {BAD_ROW}: caption is not valid UTF-8"]
    else:
        assert checked.exit_code == 0 and not lines

    built = runner.invoke(curate_app, bank_args(shards, tmp_path / "bank", faults_world["checkpoint"]))
    _record(request, case, "build-bank", built.exit_code, built.stdout.strip().splitlines()[-1])
    assert built.exit_code == 0 and not _errors(built.stderr)
    indexed = pq.read_table(tmp_path / "bank" / "images.parquet", columns=["key"]).num_rows
    left_out = 1 if error and "image" in error else 0
    assert indexed == good.num_rows - left_out and f"({left_out} rows with a missing or undecodable" in built.stdout

    curated = runner.invoke(curate_app, enrich_args(faults_world["bank"], shards, tmp_path / "out"))
    out = pq.read_table(tmp_path / "out" / "bad.parquet")
    errors = {i: e for i, e in enumerate(out.column("cocu_error").to_pylist()) if e}
    _record(request, case, "enrich", curated.exit_code, f"row {BAD_ROW}: {errors.get(BAD_ROW)}")
    assert curated.exit_code == 0 and not _errors(curated.stderr)
    assert out.num_rows == good.num_rows and out.column("key").equals(good.column("key"))  # rows in = rows out
    if error is None:
        assert not errors
    else:
        assert list(errors) == [BAD_ROW] and errors[BAD_ROW].startswith(error)
        assert out.column("cocu_concepts")[BAD_ROW].as_py() == []


@pytest.mark.parametrize("case", list(FILE_CASES))
def test_file_damage_fails_that_file_alone_in_one_line(faults_world, good, tmp_path, case, request):
    write, message = FILE_CASES[case]
    shards = tmp_path / "in"
    shards.mkdir()
    pq.write_table(good, shards / "a.parquet")
    bad = shards / "b.parquet"
    renamed = good.set_column(0, "key", pa.array([f"b-{k}" for k in good.column("key").to_pylist()]))
    write(good if case == "duplicate key across shards" else renamed, bad)
    runner = CliRunner()
    expected = re.compile(rf"^error: {re.escape(str(bad))}: .*{re.escape(message)}")

    for stage, args, app in (
        ("validate", ["validate", str(shards)], data_app),
        ("build-bank", bank_args(shards, tmp_path / "bank", faults_world["checkpoint"]), curate_app),
        ("enrich", enrich_args(faults_world["bank"], shards, tmp_path / "out"), curate_app),
    ):
        if stage == "enrich" and case == "duplicate key across shards":
            continue  # enrich curates each shard on its own: a key shared across shards is no error there
        result = runner.invoke(app, args)
        lines = _errors(result.stderr)
        _record(request, case, stage, result.exit_code, lines[0] if lines else "")
        assert result.exit_code == 1 and len(lines) == 1 and expected.match(lines[0]), (stage, lines)
    assert _visible(tmp_path / "bank") in ([], ["parts"]) and not (tmp_path / "bank" / "manifest.json").exists()
    assert not list((tmp_path / "bank").rglob("b-*.parquet"))
    if case != "duplicate key across shards":
        assert _visible(tmp_path / "out") == ["a.manifest.json", "a.parquet"]  # the good shard, whole; nothing of b
        assert pq.read_metadata(tmp_path / "out" / "a.parquet").num_rows == good.num_rows


@pytest.mark.parametrize("case", ["missing column", "mistyped column", "truncated Parquet", "zero-byte Parquet"])
def test_fit_refuses_a_damaged_shard_in_one_line(faults_world, good, tmp_path, case, request, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["cocu-train"])
    shards = tmp_path / "in"
    shards.mkdir()
    add_curated_columns(sorted(faults_world["train"].glob("*.parquet"))[0], shards / "a.parquet")
    write, message = FILE_CASES[case]
    write(pq.read_table(shards / "a.parquet"), shards / "b.parquet")
    with pytest.raises(SystemExit) as exit_:
        train_main(fit_args(shards, tmp_path / "run", 2))
    lines = capsys.readouterr().err.strip().splitlines()
    _record(request, case, "fit", exit_.value.code, lines[0] if lines else "")
    assert exit_.value.code == 1 and len(lines) == 1 and lines[0].startswith(f"error: {shards / 'b.parquet'}: ")
    assert message in lines[0]
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.parametrize(
    "damaged", ["index.faiss", "embeddings.npy", "images.parquet", "concepts.parquet", "vocabulary.json"]
)
def test_a_damaged_bank_file_stops_enrich_in_one_line(faults_world, bank_copy, tmp_path, damaged, request):
    path = bank_copy / damaged
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])
    result = CliRunner().invoke(
        curate_app,
        ["enrich", "--bank", str(bank_copy), "--shards", str(faults_world["train"]), "--out", str(tmp_path / "out")],
    )
    lines = _errors(result.stderr)
    _record(request, f"damaged bank: {damaged}", "enrich", result.exit_code, lines[0] if lines else "")
    assert result.exit_code == 1 and len(lines) == 1 and lines[0].startswith(f"error: {path}: ")
    assert not _visible(tmp_path / "out")


@pytest.mark.parametrize("stage", ["build-bank", "enrich"])
def test_a_second_run_sharing_the_output_folder_stops_in_one_line(faults_world, tmp_path, stage, request):
    from cocu.curation.core.locking import folder_lock

    out = tmp_path / "out"
    args = (
        bank_args(faults_world["train"], out, faults_world["checkpoint"])
        if stage == "build-bank"
        else enrich_args(faults_world["bank"], faults_world["train"], out)
    )
    with folder_lock(out):  # the first run, still going
        result = CliRunner().invoke(curate_app, args)
    lines = _errors(result.stderr)
    _record(request, "two runs, one --out", stage, result.exit_code, lines[0] if lines else "")
    assert (
        result.exit_code == 1 and len(lines) == 1 and lines[0].startswith(f"error: {out}: in use by another cocu run")
    )
    assert _visible(out) == []
