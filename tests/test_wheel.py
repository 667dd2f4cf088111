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
TRAIN_VERBS = ("fit", "clip")  # cocu-train is a plain function: LightningCLI's `fit` and the teacher's `clip`

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


def test_the_wheel_imports_from_its_own_install_and_ships_its_data(installed, tmp_path):
    bin_dir, env, _ = installed
    probe = (
        "import cocu.training, cocu.evaluation.html as html; from cocu.training.recipes import recipe_names;"
        "from cocu.training.teacher import DEFAULT_MODEL_CONFIG as teacher;"
        "print(cocu.training.__file__); print(recipe_names()); print(teacher.is_file());"
        "print(html.asset('style.css') != ''); from cocu.evaluation.classnames import ADE20K;"
        "print(ADE20K[7] == 'bed ')"
    )
    out = _run([bin_dir / "python", "-c", probe], tmp_path, env).splitlines()
    assert out[0].startswith(str(bin_dir.parent)), f"cocu imported from {out[0]}, not from the wheel's install"
    assert out[1] == "['groupvit-s', 'synthetic', 'tiny-test']" and out[2:] == ["True", "True", "True"]


# One interpreter answers every `--help`: each console script's entry point, as the wheel's metadata names it, called
# with the argv its script would get (a process per command costs seconds of imports each).
HELP_PROBE = """
import contextlib, io, json, sys
from importlib.metadata import entry_points
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
print(json.dumps(answers))
"""


def test_every_command_and_sub_command_answers_help(installed, tmp_path):
    bin_dir, env, scripts = installed
    assert set(scripts) == {"cocu-data", "cocu-curate", "cocu-train", "cocu-eval"}
    assert all(os.access(bin_dir / script, os.X_OK) for script in scripts)
    commands = [f"{script} --help" for script in scripts]
    commands += [f"{script} {verb} --help" for script, target in scripts.items() for verb in _sub_commands(target)]
    done = subprocess.run(
        [bin_dir / "python", "-c", HELP_PROBE],
        input="\n".join(commands),
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    answers = json.loads(done.stdout.splitlines()[-1])
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
