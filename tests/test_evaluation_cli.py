"""`cocu-eval seg`: bad input is one line and no output; a real checkpoint gives metrics.json, the table and overlays."""
import json

from typer.testing import CliRunner

from cocu.cli.eval import app

runner = CliRunner()


def test_seg_refuses_a_missing_root_and_an_unknown_preset_pair_in_one_line(tmp_path):
    checkpoint = tmp_path / "model.ckpt"
    checkpoint.write_bytes(b"unused: the layout is checked first")
    out = tmp_path / "out"
    result = runner.invoke(app, ["seg", "--checkpoint", str(checkpoint), "--dataset", "ade20k", "--root",
                                 str(tmp_path / "data"), "--out", str(out)])
    assert result.exit_code == 2
    assert result.output.strip().count("\n") == 0 and str(tmp_path / "data") in result.output
    (tmp_path / "data" / "ImageNetS" / "ImageNetS50" / "validation" / "n01443537").mkdir(parents=True)
    (tmp_path / "data" / "ImageNetS" / "ImageNetS50" / "validation-segmentation").mkdir(parents=True)
    result = runner.invoke(app, ["seg", "--checkpoint", str(checkpoint), "--dataset", "imagenet_s50", "--root",
                                 str(tmp_path / "data"), "--preset", "tcl", "--out", str(out)])
    assert result.exit_code == 2 and "preset 'tcl' has no setting for dataset 'imagenet_s50'" in result.output
    assert result.output.strip().count("\n") == 0
    assert not out.exists()


def test_seg_refuses_a_file_that_is_not_a_checkpoint(tmp_path, small_world):
    world, _ = small_world
    checkpoint = tmp_path / "model.ckpt"
    checkpoint.write_bytes(b"not a checkpoint")
    result = runner.invoke(app, ["seg", "--checkpoint", str(checkpoint), "--dataset", "synthetic", "--root", str(world),
                                 "--out", str(tmp_path / "out")])
    assert result.exit_code == 1 and "model.ckpt: not a loadable checkpoint" in result.output
    assert not (tmp_path / "out").exists()
