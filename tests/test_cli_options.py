"""Every command's options come from its dataclass config: same defaults, same help, nothing restated."""

from __future__ import annotations

import dataclasses

import pytest
import typer

from cocu.cli import clip, curate, data, export
from cocu.cli import eval as evaluation
from cocu.curation.core.configs import is_option, option_default

APPS = {
    "cocu-curate": [curate.app],
    "cocu-data": [data.app],
    "cocu-eval": [evaluation.app],
    "cocu-train": [clip.app, export.app],  # cocu-train is a plain function: each verb past `fit` is a one-command app
}
FROM_CONFIGS = {
    ("cocu-curate", "build-bank"),
    ("cocu-curate", "enrich"),
    ("cocu-curate", "show"),
    ("cocu-data", "synth"),
    ("cocu-data", "download"),
    ("cocu-eval", "seg"),
    ("cocu-eval", "predict"),
    ("cocu-train", "clip"),
    ("cocu-train", "export"),
}


def commands():
    for app_name, app in ((name, app) for name, apps in APPS.items() for app in apps):
        built = typer.main.get_command(app)
        if hasattr(built, "commands"):  # a group (typer brings its own click: no isinstance)
            for name, command in built.commands.items():
                callback = next(c for c in app.registered_commands if _name(c) == name).callback
                yield pytest.param(app_name, name, command, callback, id=f"{app_name} {name}")
        else:  # an app of one command (cocu-train clip)
            info = app.registered_commands[0]
            yield pytest.param(app_name, _name(info), built, info.callback, id=f"{app_name} {_name(info)}")


def _name(info) -> str:
    return info.name or info.callback.__name__.replace("_", "-")


def _normal(value):
    return list(value) if isinstance(value, tuple | list) else value


@pytest.mark.parametrize("app_name,name,command,callback", list(commands()))
def test_each_option_default_and_help_is_its_config_field(app_name, name, command, callback):
    configs = getattr(callback, "configs", [])
    assert bool(configs) == ((app_name, name) in FROM_CONFIGS), f"{app_name} {name}"
    params = {param.name: param for param in command.params}
    for config_type, exclude in configs:
        for field in dataclasses.fields(config_type):
            if not is_option(field) or field.name in exclude:
                continue
            param = params[field.name]
            expected = option_default(field)
            if expected is dataclasses.MISSING:
                assert param.required, f"{name} --{field.name}"
            else:
                assert _normal(param.default) == _normal(expected), f"{name} --{field.name}"
            assert param.help == field.metadata["help"], f"{name} --{field.name}"


def test_options_build_the_config_and_refuse_bad_values_in_one_line(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from cocu.curation.inputs.synthetic import WorldConfig

    seen = {}
    monkeypatch.setattr(
        "cocu.curation.inputs.synthetic.generate_world", lambda out, cfg, workers: seen.setdefault("cfg", cfg) and {}
    )
    monkeypatch.setattr(data, "_say_world", lambda *args: None)
    runner = CliRunner()
    result = runner.invoke(data.app, ["synth", str(tmp_path), "--train", "40", "--omit", "0.5", "--things-min", "3"])
    assert result.exit_code == 0, result.output
    assert seen["cfg"] == WorldConfig(train=40, omit=0.5, things_min=3)
    result = runner.invoke(data.app, ["synth", str(tmp_path), "--things-min", "4", "--things-max", "3"])
    assert result.exit_code == 1 and result.output.strip() == "error: --things-max must be at least --things-min"
    result = runner.invoke(data.app, ["download", "list.tsv", str(tmp_path), "--distributor", "mpi"])
    assert result.exit_code == 2 and "mpi" in result.output
