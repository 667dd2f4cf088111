"""`cocu-curate show` and the evaluation page: what the gallery holds matches the curated shards and the truth."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image
from test_curation import MODEL, save_tiny_clip
from test_evaluation_cli import fitted_checkpoint  # noqa: F401  (a fixture)
from testkit import seg_args
from typer.testing import CliRunner

from cocu.cli.curate import app as curate_app
from cocu.cli.eval import app as eval_app
from cocu.curation.bank.build import BankConfig, build_bank
from cocu.curation.enrich.curator import EnrichConfig
from cocu.curation.enrich.run import enrich

runner = CliRunner()
ROWS = 2 * 150 + 12


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Two world shards curated by a tiny random CLIP, plus one with a corrupt and a missing image; truth for all."""
    from cocu.curation.inputs.synthetic import WorldConfig, generate_world

    root = tmp_path_factory.mktemp("gallery")
    generate_world(root / "world", WorldConfig(train=300, teacher=0, val=0, shard_size=150), progress=False)
    shards = root / "in"
    shutil.copytree(root / "world" / "train", shards, ignore=shutil.ignore_patterns("*.json"))
    source = pq.read_table(shards / "00000.parquet").slice(0, 12)
    keys = [f"odd-{k}" for k in source.column("key").to_pylist()]
    images = source.column("jpg").to_pylist()
    images[3], images[7] = b"\xff\xd8\xff\xe0 not a jpeg", None
    pq.write_table(
        source.set_column(0, "key", pa.array(keys)).set_column(1, "jpg", pa.array(images, pa.binary())),
        shards / "odd.parquet",
    )
    truth = root / "truth"
    shutil.copytree(root / "world" / "truth" / "train", truth)
    copied = pq.read_table(truth / "00000.parquet").slice(0, 12)
    pq.write_table(copied.set_column(0, "key", pa.array(keys)), truth / "odd.parquet")
    checkpoint = save_tiny_clip(root / "ckpt", seed=1)
    built = build_bank(
        root / "world" / "train",
        root / "bank",
        BankConfig(model=MODEL, pretrained=str(checkpoint), batch_size=64, decode_workers=0),
        progress=False,
    )
    assert built.ok
    done = enrich(root / "bank", shards, root / "curated", EnrichConfig(batch_size=64), progress=False)
    assert done.ok and done.counts["errors"] == 2
    return {"root": root, "curated": root / "curated", "truth": truth}


def read_data(gallery: Path) -> dict:
    text = (gallery / "data.js").read_text()
    return json.loads(text[text.index("=") + 1 :].rstrip().rstrip(";"))


def curated_rows(folder: Path) -> list[dict]:
    return [
        row
        for path in sorted(folder.glob("*.parquet"))
        for row in pq.read_table(path).drop_columns(["jpg"]).to_pylist()
    ]


def truth_of(folder: Path) -> dict[str, set[str]]:
    return {
        row["key"]: set(row["present"])
        for path in sorted(folder.glob("*.parquet"))
        for row in pq.read_table(path, columns=["key", "present"]).to_pylist()
    }


def show(*args: str):
    return runner.invoke(curate_app, ["show", *args])


@pytest.mark.slow
def test_show_writes_every_card_as_curated_with_truth_marks(corpus, tmp_path):
    out = tmp_path / "gallery"
    result = show("--curated", str(corpus["curated"]), "--out", str(out), "--truth", str(corpus["truth"]))
    assert result.exit_code == 0, result.output
    assert re.search(rf"{ROWS} cards of {ROWS} rows from 3 shard\(s\), 2 with cocu_error, .* rows/s", result.output)
    data = read_data(out)
    names = data["concepts"]
    rows, truth = curated_rows(corpus["curated"]), truth_of(corpus["truth"])
    assert len(data["rows"]) == ROWS and data["truth"]
    assert data["shards"] == ["00000.parquet", "00001.parquet", "odd.parquet"]
    for card, row in zip(data["rows"], rows, strict=True):
        key, caption, thumb, named, curated, scores, clusters, error, right, missed, _, _ = card
        assert key == row["key"] and caption == row["caption"] and error == row["cocu_error"]
        assert [names[i] for i in named] == row["caption_concepts"]
        assert [names[i] for i in curated] == row["cocu_concepts"]  # best first, as curated
        assert scores == pytest.approx(row["cocu_scores"], abs=6e-4) and clusters == row["cocu_clusters"]
        assert right == [int(c in truth[key]) for c in row["cocu_concepts"]]
        assert {names[i] for i in missed} == truth[key] - set(row["caption_concepts"]) - set(row["cocu_concepts"])
        if error is None:
            with Image.open(out / thumb) as image:  # the shard's own bytes: 64 px is already a thumbnail
                assert image.size == (64, 64)
        else:
            assert thumb is None and row["cocu_concepts"] == []
    assert sum(len(list(d.iterdir())) for d in (out / "thumbs").iterdir()) == ROWS - 2
    assert {p.name for p in (out / "plots").iterdir()} == {"added_most.png", "per_image.png", "scores.png"}
    for plot in (out / "plots").iterdir():
        with Image.open(plot) as image:
            assert image.format == "PNG" and image.width > 300
    added = [(c, c in truth[r["key"]]) for r in rows for c in r["cocu_concepts"] if c not in r["caption_concepts"]]
    summary = (out / "summary.html").read_text()
    right = sum(ok for _, ok in added)
    assert f"({right:,} of {len(added):,})" in summary and f"0.6% (2 of {ROWS})" in summary
    assert "index.html#concept=" in summary and "<script" not in summary
    page = (out / "index.html").read_text()
    assert '<script src="data.js"></script>' in page and "http" not in page.replace("http-equiv", "")


@pytest.mark.slow
def test_cards_stop_at_the_limit_but_the_summary_counts_every_row(corpus, tmp_path):
    out = tmp_path / "gallery"
    result = show("--curated", str(corpus["curated"]), "--out", str(out), "--limit", "100", "--thumb-size", "32")
    assert result.exit_code == 0, result.output
    data = read_data(out)
    assert len(data["rows"]) == 100 and not data["truth"] and data["rows"][0][8] is None
    thumbs = sorted((out / "thumbs" / "000").iterdir())
    assert len(thumbs) == 100
    with Image.open(thumbs[0]) as image:  # reduced: 64 px images into 32 px thumbnails
        assert image.format == "JPEG" and max(image.size) == 32
    assert f"{ROWS} rows" in (out / "summary.html").read_text()
    assert "additions right" not in (out / "summary.html").read_text()


def _one_line_error(result, *parts: str) -> None:
    assert result.exit_code == 1
    assert result.output.startswith("error: ") and result.output.strip().count("\n") == 0, result.output
    for part in parts:
        assert part in result.output, (part, result.output)


@pytest.mark.slow
def test_bad_input_is_one_line_naming_file_and_row_and_writes_nothing(corpus, tmp_path):
    out = tmp_path / "gallery"
    result = show("--curated", str(corpus["root"] / "in"), "--out", str(out))  # not curated
    _one_line_error(result, "00000.parquet", "missing required column 'caption_concepts'")
    broken = tmp_path / "broken"
    broken.mkdir()
    table = pq.read_table(corpus["curated"] / "00001.parquet")
    scores = table.column("cocu_scores").to_pylist()
    scores[7] = scores[7][:-1]
    pq.write_table(
        table.set_column(
            table.schema.get_field_index("cocu_scores"), "cocu_scores", pa.array(scores, pa.list_(pa.float32()))
        ),
        broken / "b.parquet",
    )
    _one_line_error(show("--curated", str(broken), "--out", str(out)), "b.parquet: row 7:", "cocu_scores has")
    _one_line_error(
        show(
            "--curated",
            str(corpus["curated"] / "odd.parquet"),
            "--out",
            str(out),
            "--truth",
            str(corpus["root"] / "world" / "truth" / "train"),
        ),
        "odd.parquet: row 0:",
        "key 'odd-000000000' has no row in the truth folder",
    )
    assert not out.exists() and not list(tmp_path.glob(".gallery.*"))
    mine = tmp_path / "notes"
    mine.mkdir()
    (mine / "keep.txt").write_text("a folder the user made")
    _one_line_error(show("--curated", str(corpus["curated"]), "--out", str(mine)), "is not a folder written by cocu")
    assert [p.name for p in mine.iterdir()] == ["keep.txt"]


@pytest.mark.slow
def test_a_crash_keeps_the_previous_gallery_and_a_rerun_is_one_clean_run(corpus, tmp_path, monkeypatch):
    from cocu.curation.show import gallery

    out = tmp_path / "gallery"
    assert show("--curated", str(corpus["curated"] / "odd.parquet"), "--out", str(out)).exit_code == 0
    before = (out / "data.js").read_text()

    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(gallery, "write_summary", crash)
    with pytest.raises(KeyboardInterrupt):
        gallery.write_gallery(corpus["curated"], out)
    assert (out / "data.js").read_text() == before and not list(tmp_path.glob(".gallery.*"))
    (tmp_path / ".gallery.999.tmp").mkdir()  # what a killed run (SIGKILL: no cleanup) leaves
    monkeypatch.undo()
    assert show("--curated", str(corpus["curated"]), "--out", str(out)).exit_code == 0
    assert len(read_data(out)["rows"]) == ROWS and not list(tmp_path.glob(".gallery.*"))


@pytest.mark.slow
def test_eval_seg_html_writes_metrics_per_class_bars_and_overlays(tmp_path, small_world, fitted_checkpoint):  # noqa: F811
    world, record = small_world
    out = tmp_path / "eval"
    result = runner.invoke(
        eval_app, seg_args(fitted_checkpoint, "synthetic", world, out, "--save-images", "2", "--limit", "6", "--html")
    )
    assert result.exit_code == 0, result.output
    assert str(out / "index.html") in result.output
    metrics = json.loads((out / "metrics.json").read_text())
    page = (out / "index.html").read_text()
    assert f"<th>mIoU</th><td>{metrics['miou']:.2f}</td>" in page
    per_class = page.split('id="per-class"')[1].split("</table>")[0]
    assert per_class.count("<tr>") == len(record["classes"]) + 1
    widths = [float(w) for w in re.findall(r'class="bar" style="width: ([\d.]+)%"', per_class)]
    measured = [v for v in metrics["per_class_iou"].values() if v is not None]
    assert widths == pytest.approx(measured, abs=0.051)
    assert per_class.count("absent from labels and predictions") == len(metrics["per_class_iou"]) - len(measured)
    sources = re.findall(r'<img src="([^"]+)"', page)
    assert sources == ["overlays/0000_000000.png", "overlays/0001_000001.png"]
    assert all((out / s).is_file() for s in sources)
    (out / "index.html").unlink()
    shown = runner.invoke(eval_app, ["show", "--out", str(out)])
    assert shown.exit_code == 0 and (out / "index.html").read_text() == page
    missing = runner.invoke(eval_app, ["show", "--out", str(tmp_path / "nothing")])
    _one_line_error(missing, "metrics.json: no such file")


@pytest.mark.slow
def test_a_shard_whose_every_row_failed_still_gets_its_pages(corpus, tmp_path):
    failed = tmp_path / "failed"
    failed.mkdir()
    table = pq.read_table(corpus["curated"] / "odd.parquet")
    pq.write_table(table.take([3, 7]), failed / "f.parquet")
    result = show("--curated", str(failed), "--out", str(tmp_path / "gallery"))
    assert result.exit_code == 0, result.output
    assert "2 cards of 2 rows from 1 shard(s), 2 with cocu_error" in result.output
    summary = (tmp_path / "gallery" / "summary.html").read_text()
    assert "100.0% (2 of 2)" in summary and (tmp_path / "gallery" / "plots" / "scores.png").is_file()
