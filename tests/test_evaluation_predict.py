"""`cocu-eval predict` on pictures of odd sizes and kinds: label PNGs of each picture's own size, legends naming every
class present, one line for a broken file while the others run, exit 0 when any picture succeeded."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from testkit import save_random_groupvit
from typer.testing import CliRunner

from cocu.cli.eval import app

runner = CliRunner()
SMALL = ["--short-side", "64", "--window", "64", "--stride", "32", "--device", "cpu", "--threads", "1"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return save_random_groupvit(tmp_path_factory.mktemp("ckpt") / "last.ckpt", "groupvit-test", seed=3)


def _pictures(folder):
    rng = np.random.default_rng(0)
    folder.mkdir()
    Image.fromarray(rng.integers(0, 255, (300, 17, 3), dtype=np.uint8)).save(folder / "tall.png")  # 17 wide, 300 high
    Image.fromarray(rng.integers(0, 255, (1000, 1000, 3), dtype=np.uint8)).save(folder / "big.jpg")
    Image.fromarray(rng.integers(0, 255, (40, 50), dtype=np.uint8), mode="L").save(folder / "grey.png")
    Image.fromarray(rng.integers(0, 255, (33, 45, 4), dtype=np.uint8), mode="RGBA").save(folder / "alpha.png")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff not a jpeg at all")
    (folder / "notes.txt").write_text("not a picture: skipped in a folder")
    return {"tall.png": (300, 17), "big.jpg": (1000, 1000), "grey.png": (40, 50), "alpha.png": (33, 45)}


def test_predict_on_odd_pictures(tmp_path, checkpoint):
    sizes = _pictures(tmp_path / "pics")
    out = tmp_path / "out"
    args = ["predict", "--checkpoint", str(checkpoint), "--classes", "dog, grass,sky", "--out", str(out), "--html"]
    result = runner.invoke(app, [*args, "--background-threshold", "0.5", *SMALL, str(tmp_path / "pics")])
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 6, result.output  # 5 pictures, 1 summary
    broken = [line for line in lines if "broken.jpg" in line]
    assert len(broken) == 1 and broken[0].startswith("error: ") and "not a readable picture" in broken[0]
    assert "predicted 4 of 5 pictures (1 unreadable)" in lines[-1]
    legend = json.loads((out / "legend.json").read_text())
    assert [entry["name"] for entry in legend] == ["background", "dog", "grass", "sky"]
    record = json.loads((out / "predictions.json").read_text())
    assert record["classes"] == ["background", "dog", "grass", "sky"] and record["failed"][0]["file"].endswith(
        "broken.jpg"
    )
    assert {p["file"].split("/")[-1] for p in record["pictures"]} == set(sizes)
    for picture in record["pictures"]:
        name = picture["file"].split("/")[-1]
        label = Image.open(out / picture["labels"])
        assert label.mode == "P" and (label.height, label.width) == sizes[name] == (picture["height"], picture["width"])
        ids = np.unique(np.asarray(label))
        assert ids.max() < len(legend)  # every label value present has its legend entry
        assert set(picture["shares"]) == {legend[i]["name"] for i in ids}
        assert abs(sum(picture["shares"].values()) - 1) < 1e-3
        overlay = Image.open(out / picture["overlay"])
        assert overlay.width > 2 * 200  # image | prediction
    page = (out / "index.html").read_text()
    assert all(f"overlays/{name.split('.')[0]}.png" in page for name in sizes) and "broken.jpg" in page


def test_predict_exits_1_when_no_picture_can_be_read_and_2_without_classes(tmp_path, checkpoint):
    (tmp_path / "bad.png").write_bytes(b"nope")
    out = tmp_path / "out"
    result = runner.invoke(
        app,
        [
            "predict",
            "--checkpoint",
            str(checkpoint),
            "--classes",
            "a,b",
            "--out",
            str(out),
            *SMALL,
            str(tmp_path / "bad.png"),
        ],
    )
    assert result.exit_code == 1 and "bad.png: not a readable picture" in result.output
    result = runner.invoke(
        app, ["predict", "--checkpoint", str(checkpoint), "--out", str(out), str(tmp_path / "bad.png")]
    )
    assert result.exit_code == 2 and result.output.strip().count("\n") == 0 and "--classes" in result.output


def test_the_readme_commands_use_only_flags_their_help_lists():
    import re
    from pathlib import Path

    from cocu.cli.export import app as export_app

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text().replace("\\\n", " ")
    helps = {
        "cocu-eval predict": runner.invoke(app, ["predict", "--help"], env={"COLUMNS": "200"}).output,
        "cocu-train export": runner.invoke(export_app, ["--help"], env={"COLUMNS": "200"}).output,
    }
    for command, help_text in helps.items():
        lines = [line for line in readme.splitlines() if line.strip().startswith(command)]
        assert lines, f"README shows no `{command}`"
        for flag in {f for line in lines for f in re.findall(r"(--[a-z][a-z-]*)", line)}:
            assert flag in help_text, f"README's {command} uses {flag}, which its --help does not list"
