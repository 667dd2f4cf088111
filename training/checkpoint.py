"""Checkpoints: loading a trained GroupViT for evaluation, and the training-time checkpoint callback.

A `cocu-train fit` checkpoint is a Lightning checkpoint whose contents are tensors and plain data only (the model
config under ``groupvit_config``, hyperparameters as primitives), so it loads with ``torch.load(weights_only=True)``:
no pickled code objects, nothing executed on load.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.plugins import TorchCheckpointIO
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities.exceptions import SIGTERMException

from cocu.curation.core.errors import PICKLED_CHECKPOINT, CocuError
from cocu.curation.core.outputs import SIDE_FILES, check_output_folder, input_places, is_cocu_folder
from cocu.curation.core.shards import atomic_path, remove_stale_temporaries
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
        raise CheckpointError(unloadable(path, err)) from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise ValueError(f"{path}: not a Lightning checkpoint (no state_dict)")
    if "groupvit_config" in ckpt:
        config = GroupViTConfig.from_dict(ckpt["groupvit_config"])
    elif "arch" in ckpt.get("hyper_parameters", {}):
        hp = ckpt["hyper_parameters"]
        config = get_config(hp["arch"], hp.get("arch_overrides"))
    else:
        raise ValueError(f"{path}: holds no GroupViT config (groupvit_config or hyper_parameters.arch)")
    state = {k[len(_PREFIX) :]: v for k, v in ckpt["state_dict"].items() if k.startswith(_PREFIX)}
    model = GroupViT(config)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise ValueError(f"{path}: weights do not match the config ({str(err).splitlines()[0]})") from err
    return model.to(device).eval(), config


FIT_FILES = frozenset({"checkpoints", "logs", "config.yaml", "lightning_logs"})


def check_fit_root(root: str | os.PathLike, shards: str | os.PathLike) -> None:
    """Refuse a ``--trainer.default_root_dir`` that overlaps the shards or holds files fit did not make."""

    def made(entry: Path) -> bool:
        return entry.name in FIT_FILES or entry.name in SIDE_FILES or is_cocu_folder(entry)

    check_output_folder(root, input_places([shards]), made, "fit", option="--trainer.default_root_dir")


class CheckpointError(CocuError):
    """A checkpoint that cannot be loaded, said in one line naming the file."""


def unloadable(path: str | os.PathLike, err: BaseException) -> str:
    """The one line for a checkpoint ``torch.load(weights_only=True)`` refused: never torch's advice to load it
    with ``weights_only=False`` (which would run whatever code the file holds)."""
    if isinstance(err, pickle.UnpicklingError) and "weights_only" in str(err).replace("Weights only", "weights_only"):
        return f"{path}: not a loadable checkpoint: it {PICKLED_CHECKPOINT}"
    reason = str(err).strip().splitlines()[0] if str(err).strip() else ""
    return f"{path}: not a loadable checkpoint ({type(err).__name__}: {reason})"


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoints written beside their target and renamed into place; loaded as plain data only.

    Lightning's local save goes through an fsspec transaction that stages the file in ``$TMPDIR``: on another file
    system the final move is a copy, and a kill during it leaves a truncated ``last.ckpt`` (the previous good one
    gone). Loading passes ``weights_only=True`` itself rather than relying on torch's default, which changed in 2.6.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | os.PathLike, storage_options: Any = None) -> None:
        if storage_options is not None or "://" in str(path):
            super().save_checkpoint(checkpoint, str(path), storage_options)  # remote storage: Lightning's own way
            return
        with atomic_path(path) as tmp, open(tmp, "wb") as handle:  # through Python's file: a full disk is ENOSPC
            torch.save(checkpoint, handle)

    def load_checkpoint(
        self,
        path: str | os.PathLike,
        map_location: Callable | None = lambda storage, loc: storage,
        weights_only: bool | None = None,
    ) -> dict[str, Any]:
        try:
            return super().load_checkpoint(str(path), map_location=map_location, weights_only=True)
        except FileNotFoundError:
            raise
        except Exception as err:  # truncated, foreign or pickled-code file: one line naming it
            raise CheckpointError(unloadable(path, err)) from None


class GroupViTCheckpoint(ModelCheckpoint):
    """`ModelCheckpoint` that also saves when training stops between two periodic saves.

    Lightning writes `last` only on its save schedule, so a run whose max_steps is not a multiple of
    every_n_train_steps would otherwise end with stale final weights.
    """

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if trainer.is_global_zero and self.dirpath and os.path.isdir(self.dirpath):
            remove_stale_temporaries(self.dirpath)  # a checkpoint write that a kill interrupted

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self._should_skip_saving_checkpoint(trainer):  # skips when this step is saved already
            candidates = self._monitor_candidates(trainer)
            self._save_topk_checkpoint(trainer, candidates)
            self._save_last_checkpoint(trainer, candidates)

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        """On SIGTERM Lightning stops between two steps (``SIGTERMException``): save ``last.ckpt`` there, so
        ``--ckpt_path last`` resumes from the step reached, and note on the exception where the run stopped."""
        if not isinstance(exception, SIGTERMException):
            return
        if self.save_last and not self._should_skip_saving_checkpoint(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
        exception.cocu_stop = StopPoint(trainer.global_step, trainer.max_steps, self.last_model_path)  # type: ignore[attr-defined]


@dataclass(frozen=True)
class StopPoint:
    """Where a run stopped by SIGTERM was: its step, its max_steps (-1 when set by epochs), the last checkpoint."""

    step: int
    max_steps: int
    checkpoint: str

    def line(self) -> str:
        of = f" of {self.max_steps}" if self.max_steps > 0 else ""
        saved = f"checkpoint saved: {self.checkpoint}" if self.checkpoint else "no checkpoint saved"
        return f"fit stopped by SIGTERM at step {self.step}{of} ({saved}); rerun with --ckpt_path last to resume"
