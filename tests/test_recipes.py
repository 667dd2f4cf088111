"""The shipped training recipes are package data that `cocu-train fit --config NAME` finds by name."""

import pytest

from cocu.training.recipes import recipe_names, recipe_path, resolve_recipes


def test_shipped_recipes_are_found_by_name():
    assert {"groupvit-s", "synthetic", "tiny-test"} <= set(recipe_names())
    assert recipe_path("synthetic") == recipe_path("synthetic.yaml") and recipe_path("synthetic").is_file()
    with pytest.raises(FileNotFoundError, match="no training recipe named 'nope'.*synthetic"):
        recipe_path("nope")


def test_config_names_become_paths_but_files_and_other_args_stay(tmp_path):
    own = tmp_path / "synthetic.yaml"
    own.write_text("seed_everything: 1\n")
    args = ["fit", "--config", "tiny-test", "--config=synthetic", "--data.text_mode", "synthetic", "--config", str(own)]
    resolved = resolve_recipes(args)
    assert resolved[2] == str(recipe_path("tiny-test")) and resolved[3] == f"--config={recipe_path('synthetic')}"
    assert resolved[4:] == args[4:]  # a value of another option and an existing file are left alone
