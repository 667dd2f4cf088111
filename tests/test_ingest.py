"""Ingestion: img2dataset against a loopback server, resume after an interruption, webdataset tars round trip."""

import functools
import io
import json
import os
import signal
import tarfile
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image
from testkit import tiny_clip_config
from typer.testing import CliRunner

from cocu.cli.data import app
from cocu.curation.core.shards import expand_shards, iter_batches, validate_shard
from cocu.curation.inputs.download import DownloadConfig, download, summarize

# img2dataset's per-URL timeout here (s): shard 1 stays open this long, the window for the interrupt to land (the
# interrupter polls every 50 ms) and what the rerun waits on the slow URL
TIMEOUT = 3


@functools.cache
def jpeg(index: int, size=(40, 24)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, ((index * 37) % 256, (index * 91) % 256, 128)).save(buffer, format="JPEG")
    return buffer.getvalue()


class Server:
    """Generated JPEGs on 127.0.0.1: /img/N.jpg serves one, /missing/* 404s, /slow/* stalls past the timeout,
    /junk/* is not an image."""

    def __init__(self):
        self.requests: Counter = Counter()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                server.requests[self.path] += 1
                kind = self.path.split("/")[1]
                if kind == "img":
                    body, status, kind_header = jpeg(int(self.path.split("/")[2].split(".")[0])), 200, "image/jpeg"
                elif kind == "junk":
                    body, status, kind_header = b"<html>this is not an image</html>", 200, "image/jpeg"
                elif kind == "slow":
                    time.sleep(TIMEOUT + 2)
                    body, status, kind_header = jpeg(0), 200, "image/jpeg"
                else:
                    body, status, kind_header = b"not found", 404, "text/plain"
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", kind_header)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up on /slow/ already

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def server():
    srv = Server()
    yield srv
    srv.close()


SHARD = 10
GOOD, MISSING, SLOW, JUNK = 26, 2, 1, 1  # 30 URLs, 3 shards of 10
ARGS = [
    "--processes-count",
    "1",
    "--thread-count",
    "4",
    "--shard-size",
    str(SHARD),
    "--timeout",
    str(TIMEOUT),
    "--image-size",
    "16",
]


def url_rows(base: str) -> list[tuple[str, str]]:
    """(url, caption) rows: shard 0 all successes; shard 1 a 404 and the slow URL (it holds shard 1 open);
    shard 2 junk and a 404."""
    things, places = ("dog", "bicycle", "boat", "tree", "horse"), ("beach", "street", "garden")
    rows = [(f"{base}/img/{i}.jpg", f"a {things[i % 5]} on the {places[i % 3]} ({i})") for i in range(GOOD)]
    rows[3] = (rows[3][0], 'the "best" tree on the beach')  # a stray quote, as in real CC3M captions
    for index, row in (
        (12, ("missing/a.jpg", "a dead link")),
        (15, ("slow/a.jpg", "a slow server")),
        (21, ("junk/a.jpg", "a page that is not an image")),
        (25, ("missing/b.jpg", "another dead link")),
    ):
        rows.insert(index, (f"{base}/{row[0]}", row[1]))
    return rows


def wait_for(path, seconds=120.0):
    deadline = time.monotonic() + seconds
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


@pytest.fixture(scope="module")
def downloaded(server, tmp_path_factory):
    """CC3M's official layout (header-less caption<TAB>url), downloaded twice: SIGINT during shard 1, then a rerun."""
    root = tmp_path_factory.mktemp("download")
    rows = url_rows(server.url)
    urls = root / "Train_GCC-training.tsv"
    urls.write_text("".join(f"{c}\t{u}\n" for u, c in rows))
    out = root / "out"
    command = ["download", str(urls), str(out), "--preset", "cc3m", *ARGS]
    default_handler = signal.getsignal(signal.SIGINT)

    def interrupt():  # Ctrl-C once shard 0 is finished and shard 1 waits on the slow URL
        wait_for(out / "00000_stats.json")
        if signal.getsignal(signal.SIGINT) is not default_handler:  # img2dataset's handler is in place
            os.kill(os.getpid(), signal.SIGINT)

    interrupter = threading.Thread(target=interrupt, daemon=True)
    interrupter.start()
    first = CliRunner().invoke(app, command)
    interrupter.join()
    after_first = {
        "returncode": first.exit_code,
        "output": first.output,
        "requests": Counter(server.requests),
        "stats": sorted(p.name for p in out.glob("*_stats.json")),
        "mtime": (out / "00000.parquet").stat().st_mtime_ns,
    }
    second = CliRunner().invoke(app, command)
    return {"rows": rows, "list": urls, "out": out, "first": after_first, "second": second}


@pytest.mark.slow
def test_download_counts_add_up_and_shards_are_cocu_input(downloaded):
    rows, out, result = downloaded["rows"], downloaded["out"], downloaded["second"]
    assert result.exit_code == 0, result.output
    summary = summarize(out)
    assert (summary.shards, summary.count) == (3, len(rows))
    assert summary.successes == GOOD
    assert summary.failed_to_download == MISSING + SLOW
    assert summary.failed_to_resize == JUNK
    assert summary.successes + summary.failed_to_download + summary.failed_to_resize == len(rows)
    assert (
        f"{len(rows)} urls: success {GOOD}, failed_to_download {MISSING + SLOW}, failed_to_resize {JUNK}"
        in result.output
    )

    shards = expand_shards(out)
    assert [p.name for p in shards] == ["00000.parquet", "00001.parquet", "00002.parquet"]
    assert sum(validate_shard(p) for p in shards) == len(rows)
    table = pa.Table.from_batches([b for p in shards for b in iter_batches(p)])
    assert {"key", "jpg", "caption", "url", "status", "error_message", "width", "height"} <= set(table.column_names)
    by_url = {r["url"]: r for r in table.to_pylist()}
    assert set(by_url) == {u for u, _ in rows}
    for url, caption in rows:
        row = by_url[url]
        assert row["caption"] == caption
        assert (row["status"] == "success") == ("/img/" in url)
        assert (row["jpg"] is None) == ("/img/" not in url)
    assert "404" in by_url[rows[12][0]]["error_message"] and "timed out" in by_url[rows[15][0]]["error_message"]
    for r in (r for r in by_url.values() if r["status"] == "success"):  # keep_ratio: smaller side to image_size
        assert Image.open(io.BytesIO(r["jpg"])).size == (r["width"], r["height"]) == (27, 16)
        assert (r["original_width"], r["original_height"]) == (40, 24)
    assert not (out / "_tmp").exists()


@pytest.mark.slow
def test_interrupted_download_resumes_without_refetching_finished_shards(downloaded, server):
    rows, out, first, second = downloaded["rows"], downloaded["out"], downloaded["first"], downloaded["second"]
    assert first["returncode"] == 130 and "run the same command again to resume" in first["output"]
    assert first["stats"] == ["00000_stats.json"]
    paths = [url.split(server.url, 1)[1] for url, _ in rows]
    assert all(first["requests"][p] == 1 for p in paths[:SHARD])
    assert not any(first["requests"][p] for p in paths[2 * SHARD :])  # shard 2 had not started
    # The rerun fetched shards 1 and 2 and never touched shard 0.
    assert all(server.requests[p] == 1 for p in paths[:SHARD])
    assert all(server.requests[p] - first["requests"][p] == 1 for p in paths[SHARD:])
    assert (out / "00000.parquet").stat().st_mtime_ns == first["mtime"]
    assert "3 shard(s) done (1 from an earlier run)" in second.output and "20 urls this run" in second.output
    # A third run finds every shard done and starts no download at all.
    before = Counter(server.requests)
    mtimes = {p: p.stat().st_mtime_ns for p in out.rglob("*.parquet")}
    third = download(
        downloaded["list"], out, DownloadConfig.preset("cc3m", number_sample_per_shard=SHARD), progress=False
    )
    assert (third.shards, third.shards_skipped, third.count_this_run) == (3, 3, 0) and server.requests == before
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.parquet")} == mtimes


@pytest.mark.slow
def test_list_with_header_passes_through_with_extra_columns(server, tmp_path):
    rows = [(f"{server.url}/img/{i}.jpg", f"caption {i}", f"cc-by-{i}") for i in range(4)]
    urls = tmp_path / "urls.csv"
    urls.write_text("image_url,text,license\n" + "".join(f"{u},{c},{lic}\n" for u, c, lic in rows))
    summary = download(
        urls,
        tmp_path / "out",
        DownloadConfig(
            url_col="image_url",
            caption_col="text",
            extra_columns=("license",),
            processes_count=1,
            thread_count=4,
            timeout=TIMEOUT,
            image_size=16,
        ),
        progress=False,
    )
    assert (summary.successes, summary.count, summary.shards_expected, summary.shards_failed) == (4, 4, 1, 0)
    table = pq.read_table(tmp_path / "out" / "00000.parquet")
    assert sorted(zip(table["url"].to_pylist(), table["caption"].to_pylist(), table["license"].to_pylist())) == rows
    assert validate_shard(tmp_path / "out" / "00000.parquet") == 4


@pytest.mark.slow
def test_ray_distributor_downloads_the_same_shards(server, ray_cluster, tmp_path):
    rows = [(f"{server.url}/img/{i}.jpg", f"caption {i}") for i in range(6)]
    urls = tmp_path / "urls.csv"
    urls.write_text("url,caption\n" + "".join(f"{u},{c}\n" for u, c in rows))
    config = DownloadConfig(
        processes_count=2, thread_count=4, timeout=TIMEOUT, image_size=16, number_sample_per_shard=3, distributor="ray"
    )
    summary = download(urls, tmp_path / "out", config, progress=False)
    assert (summary.successes, summary.shards, summary.shards_expected, summary.shards_failed) == (6, 2, 2, 0)
    table = pq.read_table([tmp_path / "out" / "00000.parquet", tmp_path / "out" / "00001.parquet"])
    assert sorted(zip(table["url"].to_pylist(), table["caption"].to_pylist())) == sorted(rows)
    with pytest.raises(ValueError, match="distributor 'dask' is not one of multiprocessing, pyspark, ray"):
        download(urls, tmp_path / "other", DownloadConfig(distributor="dask"), progress=False)


@pytest.mark.parametrize(
    "content, message",
    [
        ("link\tcaption\nhttp://x/1.jpg\tone\n", "missing column 'url' (has: link, caption)"),
        ("http://x/1.jpg\tone\n", "header-less list needs --preset"),
        ("url\tcaption\nhttp://x/1.jpg\t1\nhttp://x/2.jpg\t2\n", "column 'caption' holds int64, not text"),
        (
            'url\tcaption\nhttp://x/1.jpg\tfine\nhttp://x/2.jpg\t"unclosed quote\nhttp://x/3.jpg\tlost\n',
            "row 1: a quote character in column 'caption' joins the following lines",
        ),
    ],
)
def test_bad_url_list_fails_before_any_download_in_one_line(tmp_path, content, message):
    urls = tmp_path / "urls.tsv"
    urls.write_text(content)
    result = CliRunner().invoke(app, ["download", str(urls), str(tmp_path / "out")])
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and str(urls) in lines[0]
    assert not (tmp_path / "out").exists()


def write_tar(path, samples, cut=None):
    """A GroupViT-style shard: <key>.<ext> image + <key>.txt caption + <key>.json metadata, as img2dataset writes."""
    with tarfile.open(path, "w") as tar:
        for key, ext, image, caption in samples:
            members = [(f"{key}.txt", caption.encode()), (f"{key}.json", b"{}")]
            for name, data in ([(f"{key}.{ext}", image)] if image is not None else []) + members:
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    if cut is not None:  # keep the bytes before the cut-th member's header, as an interrupted copy would
        with tarfile.open(path) as tar:
            offset = tar.getmembers()[cut].offset
        path.write_bytes(path.read_bytes()[:offset])


def png(index: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (index % 256, 0, 0)).save(buffer, format="PNG")
    return buffer.getvalue()


def make_samples(shard: int, n: int):
    return [
        (
            f"{shard:05d}{i:04d}",
            "png" if i % 3 == 0 else "jpg",
            png(i) if i % 3 == 0 else jpeg(i),
            f"shard {shard} picture {i} with ünïcode",
        )
        for i in range(n)
    ]


def test_convert_round_trips_tars(tmp_path):
    tars = tmp_path / "tars"
    tars.mkdir()
    expected = {}
    for shard in range(3):
        samples = make_samples(shard, 7 + shard)
        samples[1] = (samples[1][0], "JPEG", *samples[1][2:])  # other spellings of the image extension
        expected.update({key: (image, caption) for key, _, image, caption in samples})
        if shard == 1:
            samples.insert(4, ("00001orphan", None, None, "a caption whose image is missing"))
        write_tar(tars / f"gcc-train-{shard:06d}.tar", samples)
    out = tmp_path / "out"
    result = CliRunner().invoke(
        app, ["convert", str(tars / "gcc-train-{000000..000002}.tar"), str(out), "--workers", "1"]
    )
    assert result.exit_code == 0, result.output
    shards = expand_shards(out)
    assert [p.name for p in shards] == [f"gcc-train-{s:06d}.parquet" for s in range(3)]
    rows = [r for p in shards for b in iter_batches(p) for r in b.to_pylist()]
    assert {r["key"]: (r["jpg"], r["caption"]) for r in rows} == expected and len(rows) == len(expected)
    assert f"incomplete 1; rows {len(expected)}" in result.output

    # resumable: a rerun skips every finished shard and rewrites nothing
    mtimes = {p: p.stat().st_mtime_ns for p in shards}
    result = CliRunner().invoke(app, ["convert", str(tars / "*.tar"), str(out), "--workers", "1"])
    assert result.exit_code == 0 and "0 shard(s) written, 3 skipped" in result.output
    assert {p: p.stat().st_mtime_ns for p in shards} == mtimes


def test_corrupt_tar_is_one_line_and_the_others_convert(tmp_path):
    write_tar(tmp_path / "a.tar", make_samples(0, 5))
    write_tar(tmp_path / "b.tar", make_samples(1, 10), cut=12)  # a member boundary: tarfile alone sees a clean end
    write_tar(tmp_path / "e.tar", make_samples(4, 10), cut=13)
    (tmp_path / "e.tar").write_bytes((tmp_path / "e.tar").read_bytes()[:-100])  # a cut inside a member's data
    (tmp_path / "c.tar").write_bytes(b"definitely not a tar archive" * 40)
    write_tar(tmp_path / "d.tar", make_samples(3, 5) + [("00003dupe", "jpg", jpeg(1), "x")] + make_samples(3, 1))
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["convert", str(tmp_path / "*.tar"), str(out), "--workers", "1"])
    assert result.exit_code == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 4
    assert any(str(tmp_path / "b.tar") in e and "truncated tar: 4 sample(s) read" in e for e in errors)
    assert any(str(tmp_path / "e.tar") in e and "not a readable webdataset tar after 4 sample(s)" in e for e in errors)
    assert any(str(tmp_path / "c.tar") in e and "not a readable webdataset tar" in e for e in errors)
    assert any(str(tmp_path / "d.tar") in e and "duplicate key '000030000'" in e for e in errors)
    assert sorted(p.name for p in out.glob("*.parquet")) == ["a.parquet"]
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporaries left behind
    assert validate_shard(out / "a.parquet") == 5
    assert "1 shard(s) written, 0 skipped (already done), 4 failed" in result.stdout


TINY_CLIP = tiny_clip_config(width=64, layers=1, image_size=32)


@pytest.mark.slow
def test_downloaded_shards_feed_build_bank_and_enrich_as_they_are(downloaded, tmp_path):
    """The data contract end to end: img2dataset's folder goes to cocu-curate unchanged, failed rows included."""
    from cocu.cli.curate import app as curate

    out, rows = downloaded["out"], downloaded["rows"]
    config = tmp_path / "cocu-ingest-tiny.json"
    config.write_text(json.dumps(TINY_CLIP))
    bank = tmp_path / "bank"
    result = CliRunner().invoke(
        curate,
        [
            "build-bank",
            "--shards",
            str(out),
            "--model",
            "cocu-ingest-tiny",
            "--model-config",
            str(config),
            "--min-count",
            "2",
            "--out",
            str(bank),
            "--batch-size",
            "16",
            "--decode-workers",
            "0",
        ],
    )
    assert result.exit_code == 0, result.output
    manifest = json.loads((bank / "manifest.json").read_text())
    assert (manifest["rows"], manifest["undecodable"]) == (GOOD, len(rows) - GOOD)
    assert sorted(Path(s["path"]).name for s in manifest["sources"]) == [
        "00000.parquet",
        "00001.parquet",
        "00002.parquet",
    ]

    curated = tmp_path / "curated"
    result = CliRunner().invoke(
        curate, ["enrich", "--bank", str(bank), "--shards", str(out), "--out", str(curated), "--decode-workers", "0"]
    )
    assert result.exit_code == 0, result.output
    table = pa.concat_tables(pq.read_table(p) for p in sorted(curated.glob("*.parquet")))
    assert table.num_rows == len(rows)
    failed = [r for r in table.select(["status", "cocu_error"]).to_pylist() if r["status"] != "success"]
    assert len(failed) == len(rows) - GOOD and all(r["cocu_error"] for r in failed)
