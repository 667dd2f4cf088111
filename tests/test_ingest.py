"""Ingestion: img2dataset against a loopback server, resume after an interruption, webdataset tars round trip."""
import functools
import io
import json
import tarfile
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image
from typer.testing import CliRunner

from cocu.cli.data import app
from cocu.curation.ingest import DownloadConfig, download, summarize
from cocu.curation.shards import ShardError, expand_shards, iter_batches, validate_shard

TIMEOUT = 3  # img2dataset's per-URL timeout in these tests (seconds)


@functools.lru_cache(maxsize=None)
def jpeg(index: int, size=(40, 24)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, ((index * 37) % 256, (index * 91) % 256, 128)).save(buffer, format="JPEG")
    return buffer.getvalue()


class Server:
    """Generated JPEGs on 127.0.0.1: /img/N.jpg serves one, /missing/* 404s, /slow/* stalls past the timeout, /junk/* is not an image."""

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


def url_rows(base: str) -> list[tuple[str, str]]:
    """(url, caption) rows; shard 0 is all successes, the slow URL sits in shard 2 (the resume test redoes shard 1)."""
    rows = [(f"{base}/img/{i}.jpg", f"a photo of thing {i}") for i in range(GOOD)]
    rows.insert(12, (f"{base}/missing/a.jpg", "a dead link"))
    rows.insert(27, (f"{base}/slow/a.jpg", "a slow server"))
    rows.insert(21, (f"{base}/junk/a.jpg", "a page that is not an image"))
    rows.insert(25, (f"{base}/missing/b.jpg", "another dead link"))
    return rows


@pytest.fixture(scope="module")
def downloaded(server, tmp_path_factory):
    root = tmp_path_factory.mktemp("download")
    rows = url_rows(server.url)
    urls = root / "urls.tsv"
    urls.write_text("url\tcaption\n" + "".join(f"{u}\t{c}\n" for u, c in rows))
    out = root / "out"
    result = CliRunner().invoke(app, ["download", str(urls), str(out), "--processes-count", "2", "--thread-count", "4",
                                      "--shard-size", str(SHARD), "--timeout", str(TIMEOUT), "--image-size", "16"])
    return root, urls, out, rows, result


def test_download_counts_add_up_and_shards_are_cocu_input(downloaded):
    root, urls, out, rows, result = downloaded
    assert result.exit_code == 0, result.output
    summary = summarize(out)
    assert (summary.shards, summary.count) == (3, len(rows))
    assert summary.successes == GOOD
    assert summary.failed_to_download == MISSING + SLOW
    assert summary.failed_to_resize == JUNK
    assert summary.successes + summary.failed_to_download + summary.failed_to_resize == len(rows)
    assert f"success {GOOD}, failed_to_download {MISSING + SLOW}, failed_to_resize {JUNK}" in result.output

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
    assert by_url[f"{rows[0][0]}"]["status"] == "success"
    assert "404" in by_url[f"{rows[0][0].rsplit('/img/', 1)[0]}/missing/a.jpg"]["error_message"]
    good = [r for r in by_url.values() if r["status"] == "success"]
    for r in good:  # keep_ratio: the smaller side becomes image_size, the aspect ratio stays
        assert Image.open(io.BytesIO(r["jpg"])).size == (r["width"], r["height"]) == (27, 16)
        assert (r["original_width"], r["original_height"]) == (40, 24)
    assert not (out / "_tmp").exists()


def test_rerun_after_interruption_downloads_only_the_unfinished_shard(downloaded, server):
    root, urls, out, rows, _ = downloaded
    # What a kill during shard 1 leaves behind: its Parquet half-written and no stats file.
    (out / "00001_stats.json").unlink()
    (out / "00001.parquet").write_bytes((out / "00001.parquet").read_bytes()[:100])
    untouched = {name: (out / name).stat().st_mtime_ns for name in ("00000.parquet", "00002.parquet")}
    before = Counter(server.requests)
    summary = download(urls, out, DownloadConfig(processes_count=1, thread_count=4, number_sample_per_shard=SHARD,
                                                 timeout=TIMEOUT, image_size=16), progress=False)
    again = server.requests - before
    shard1 = {u.split(server.url, 1)[1] for u, _ in rows[SHARD:2 * SHARD]}
    assert set(again) == shard1 and all(n == 1 for n in again.values())
    assert {name: (out / name).stat().st_mtime_ns for name in untouched} == untouched
    assert (summary.shards, summary.shards_skipped, summary.shards_failed) == (3, 2, 0)
    assert summary.count_this_run == SHARD and summary.count == len(rows)
    assert validate_shard(out / "00001.parquet") == SHARD


def test_headerless_preset_lists(server, tmp_path):
    rows = [(f"{server.url}/img/{i}.jpg", f"caption {i}") for i in range(4)]
    rows.append((f"{server.url}/img/4.jpg", 'a "quoted" caption'))
    cc3m = tmp_path / "Train_GCC-training.tsv"
    cc3m.write_text("".join(f"{c}\t{u}\n" for u, c in rows))
    summary = download(cc3m, tmp_path / "out", DownloadConfig.preset("cc3m", processes_count=1, thread_count=4,
                                                                       timeout=TIMEOUT, image_size=16), progress=False)
    assert (summary.successes, summary.count, summary.shards_failed) == (5, 5, 0)
    table = pq.read_table(tmp_path / "out" / "00000.parquet")
    assert sorted(zip(table["url"].to_pylist(), table["caption"].to_pylist())) == sorted(rows)
    assert (tmp_path / "out" / "_input" / "Train_GCC-training.parquet").exists()


@pytest.mark.parametrize("content, message", [
    ("link\tcaption\nhttp://x/1.jpg\tone\n", "missing column 'url' (has: link, caption)"),
    ("http://x/1.jpg\tone\n", "header-less list needs --preset"),
])
def test_bad_url_list_fails_fast_in_one_line(tmp_path, content, message):
    urls = tmp_path / "urls.tsv"
    urls.write_text(content)
    started = time.perf_counter()
    result = CliRunner().invoke(app, ["download", str(urls), str(tmp_path / "out")])
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and str(urls) in lines[0]
    assert time.perf_counter() - started < 5 and not list((tmp_path / "out").glob("*.parquet")) if (tmp_path / "out").exists() else True


def write_tar(path, samples, cut=None):
    """A GroupViT-style shard: <key>.<ext> image + <key>.txt caption + <key>.json metadata, as img2dataset writes."""
    with tarfile.open(path, "w") as tar:
        for key, ext, image, caption in samples:
            for name, data in ((f"{key}.{ext}", image), (f"{key}.txt", caption.encode()), (f"{key}.json", b"{}")):
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
    return [(f"{shard:05d}{i:04d}", "png" if i % 3 == 0 else "jpg", png(i) if i % 3 == 0 else jpeg(i),
             f"shard {shard} picture {i} with ünïcode")
            for i in range(n)]


def test_convert_round_trips_tars(tmp_path):
    tars = tmp_path / "tars"
    tars.mkdir()
    expected = {}
    for shard in range(3):
        samples = make_samples(shard, 7 + shard)
        write_tar(tars / f"gcc-train-{shard:06d}.tar", samples)
        expected.update({key: (image, caption) for key, _, image, caption in samples})
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["convert", str(tars / "gcc-train-{000000..000002}.tar"), str(out), "--workers", "1"])
    assert result.exit_code == 0, result.output
    shards = expand_shards(out)
    assert [p.name for p in shards] == [f"gcc-train-{s:06d}.parquet" for s in range(3)]
    rows = [r for p in shards for b in iter_batches(p) for r in b.to_pylist()]
    assert {r["key"]: (r["jpg"], r["caption"]) for r in rows} == expected and len(rows) == len(expected)

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
    result = CliRunner().invoke(app, ["convert", str(tmp_path / "*.tar"), str(out), "--workers", "2"])
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
