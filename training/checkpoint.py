"""Checkpoints: loading a trained GroupViT for evaluation, and the training-time checkpoint callback.

A `cocu-train fit` checkpoint is a Lightning checkpoint whose contents are tensors and plain data only (the model config
under ``groupvit_config``, hyperparameters as primitives), so it loads with ``torch.load(weights_only=True)``: no pickled
code objects, nothing executed on load.
"""
from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from cocu.training.model import GroupViT, GroupViTConfig, get_config

_PREFIX = "model."


def load_groupvit(path: str | Path, device: str | torch.device = "cpu") -> tuple[GroupViT, GroupViTConfig]:
    """The model of a `cocu-train fit` checkpoint, in eval mode on `device`, and its config."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint file")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a truncated or foreign file: one line naming it
        raise ValueError(f"{path}: not a loadable checkpoint ({type(err).__name__}: {str(err).splitlines()[0]})") from err
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise ValueError(f"{path}: not a Lightning checkpoint (no state_dict)")
    if "groupvit_config" in ckpt:
        config = GroupViTConfig.from_dict(ckpt["groupvit_config"])
    elif "arch" in ckpt.get("hyper_parameters", {}):
        hp = ckpt["hyper_parameters"]
        config = get_config(hp["arch"], hp.get("arch_overrides"))
    else:
        raise ValueError(f"{path}: holds no GroupViT config (groupvit_config or hyper_parameters.arch)")
    state = {k[len(_PREFIX):]: v for k, v in ckpt["state_dict"].items() if k.startswith(_PREFIX)}
    model = GroupViT(config)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise ValueError(f"{path}: weights do not match the config ({str(err).splitlines()[0]})") from err
    return model.to(device).eval(), config


class GroupViTCheckpoint(ModelCheckpoint):
    """`ModelCheckpoint` that also saves when training stops between two periodic saves.

    Lightning writes `last` only on its save schedule, so a run whose max_steps is not a multiple of
    every_n_train_steps would otherwise end with stale final weights.
    """

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self._should_skip_saving_checkpoint(trainer):  # skips when this step is saved already
            candidates = self._monitor_candidates(trainer)
            self._save_topk_checkpoint(trainer, candidates)
            self._save_last_checkpoint(trainer, candidates)
