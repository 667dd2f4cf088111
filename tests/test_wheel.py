"""The built wheel works on its own: installed outside the checkout, its commands find every file they read at run time.

The fresh environment sees the running interpreter's site-packages through a ``.pth`` file (so torch is not installed
again) but not the editable install of this checkout: ``.pth`` lines add plain paths, whose own ``.pth`` hooks (the
editable finder) are not run.
"""

from __future__ import annotations

import configparser
import json
import os
import shutil
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest
import typer

REPO = Path(__file__).resolve().parents[1]
SKIP = shutil.ignore_patterns(
    ".venv", ".git", "build", "*.egg-info", "__pycache__", ".pytest_cache", "benchmark", "lightning_logs", "tests"
)
# cocu-train is a plain function: LightningCLI's `fit`, the teacher's `clip`, `export` (transformers' GroupViT)
TRAIN_VERBS = ("fit", "clip", "export")

pytestmark = pytest.mark.slow


def _run(command: list, cwd: Path, env: dict) -> str:
    done = subprocess.run([str(c) for c in command], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"{' '.join(map(str, command))} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


def _console_scripts(wheel: Path) -> dict[str, str]:
    with zipfile.ZipFile(wheel) as archive:
        name = next(n for n in archive.namelist() if n.endswith(".dist-info/entry_points.txt"))
        parser = configparser.ConfigParser()
        parser.read_string(archive.read(name).decode())
    return dict(parser["console_scripts"])


def _sub_commands(target: str) -> tuple[str, ...]:
    module, _, attr = target.partition(":")
    entry = getattr(__import__(module, fromlist=[attr]), attr)
    if isinstance(entry, typer.Typer):
        return tuple(typer.main.get_command(entry).commands)
    return TRAIN_VERBS


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> tuple[Path, dict, dict[str, str]]:
    """A wheel built from a copy of the sources, installed with --no-deps into a fresh venv; its bin folder."""
    root = tmp_path_factory.mktemp("wheel")
    source, dist, env_dir = root / "src", root / "dist", root / "env"
    shutil.copytree(REPO, source, ignore=SKIP)
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PYTHONNOUSERSITE": "1"}
    _run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "-w", dist, source],
        root,
        env,
    )
    (wheel,) = dist.glob("cocu-*.whl")
    venv.EnvBuilder(with_pip=False).create(env_dir)
    python = env_dir / "bin" / "python"
    site = Path(_run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], root, env).strip())
    shared = [p for p in sys.path if p.endswith(("site-packages", "dist-packages")) and Path(p).is_dir()]
    (site / "zz_shared_site_packages.pth").write_text("\n".join(shared) + "\n")
    _run([sys.executable, "-m", "pip", "--python", python, "install", "--quiet", "--no-deps", wheel], root, env)
    return env_dir / "bin", env, _console_scripts(wheel)


# One interpreter of the wheel's environment answers both checks below (each new one costs seconds of imports): first
# where cocu imports from and the data it ships, then every `--help`, each console script's entry point (as the
# wheel's metadata names it) called with the argv its script would get.
PROBE = """
import contextlib, io, json, sys
import cocu.training, cocu.evaluation.html as html
from cocu.evaluation.classnames import ADE20K
from cocu.training.recipes import recipe_names
from cocu.training.clip import DEFAULT_MODEL_CONFIG as teacher
from importlib.metadata import entry_points
shipped = [cocu.training.__file__, str(recipe_names()), teacher.is_file(), html.asset("style.css") != ""]
shipped.append(ADE20K[7] == "bed ")
answers = {}
for line in sys.stdin.read().splitlines():
    script, *argv = line.split()
    (entry,) = (e for e in entry_points(group="console_scripts") if e.name == script)
    sys.argv, out = [script, *argv], io.StringIO()
    with contextlib.redirect_stdout(out):
        try:
            entry.load()()
            code = 0
        except SystemExit as stop:
            code = stop.code or 0
    answers[line] = [code, out.getvalue()]
print(json.dumps({"shipped": shipped, "help": answers}))
"""


@pytest.fixture(scope="module")
def probed(installed, tmp_path_factory) -> tuple[list, list[str], dict[str, list]]:
    """(what the wheel's install imports and ships, the `--help` commands asked, their [exit code, output])."""
    bin_dir, env, scripts = installed
    commands = [f"{script} --help" for script in scripts]
    commands += [f"{script} {verb} --help" for script, target in scripts.items() for verb in _sub_commands(target)]
    done = subprocess.run(
        [bin_dir / "python", "-c", PROBE],
        input="\n".join(commands),
        cwd=tmp_path_factory.mktemp("probe"),
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    answer = json.loads(done.stdout.splitlines()[-1])
    return answer["shipped"], commands, answer["help"]


def test_the_wheel_imports_from_its_own_install_and_ships_its_data(installed, probed):
    bin_dir, _, _ = installed
    where, *shipped = probed[0]
    assert where.startswith(str(bin_dir.parent)), f"cocu imported from {where}, not from the wheel's install"
    assert shipped == ["['groupvit-s', 'synthetic', 'synthetic-gpu', 'tiny-test']", True, True, True]


def test_every_command_and_sub_command_answers_help(installed, probed):
    bin_dir, _, scripts = installed
    _, commands, answers = probed
    assert set(scripts) == {"cocu-data", "cocu-curate", "cocu-train", "cocu-eval"}
    assert all(os.access(bin_dir / script, os.X_OK) for script in scripts)
    assert list(answers) == commands
    for command, (code, output) in answers.items():
        assert code == 0 and "usage" in output.lower(), f"{command}: exit {code}\n{output[-2000:]}"


def test_synth_and_a_shipped_recipe_run_from_the_wheel(installed, tmp_path):
    bin_dir, env, _ = installed
    _run(
        [bin_dir / "cocu-data", "synth", "world", "--train", "8", "--teacher", "8", "--val", "2", "--shard-size", "4"],
        tmp_path,
        env,
    )
    assert (tmp_path / "world" / "world.json").is_file() and len(
        list((tmp_path / "world" / "train").glob("*.parquet"))
    ) == 2
    config = _run(
        [bin_dir / "cocu-train", "fit", "--config", "tiny-test", "--data.shards", "world/train", "--print_config"],
        tmp_path,
        env,
    )
    assert "groupvit" in config and "world/train" in config
