"""`cocu-train fit`: pretrain GroupViT on (curated) Parquet shards with LightningCLI.

    cocu-train fit --config synthetic --data.shards WORLD/train --data.text_mode caption
    cocu-train fit --config synthetic ... --ckpt_path last     # resume after a kill

`--config` takes a YAML file or the name of a recipe shipped with cocu (groupvit-s, synthetic, tiny-test).

Every option of the model (`--model.*`), the data module (`--data.*`), the Trainer (`--trainer.*`) and the checkpoint
callback (`--checkpoint.*`) can be set in the YAML or on the command line; `--print_config` shows the result.
"""

from __future__ import annotations

import sys
import time
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.exceptions import SIGTERMException

from cocu.curation.core.errors import CocuError
from cocu.training.checkpoint import AtomicCheckpointIO, GroupViTCheckpoint, check_fit_root
from cocu.training.model import get_config
from cocu.training.module import GroupViTModule, datamodule_batch_size
from cocu.training.recipes import resolve_recipes
from cocu.training.stopping import EXIT_SIGTERM, STOPPED_BEFORE, STOPPED_IN_STEP, sigterm_received, stop_on_sigterm


def _checkpoint_dir(root: str | None) -> str:
    return str(Path(root or ".") / "checkpoints")


def _image_size(arch: str, overrides: dict[str, Any] | None) -> int:
    return get_config(arch, overrides).vision.image_size


def _context_length(arch: str, overrides: dict[str, Any] | None) -> int:
    return get_config(arch, overrides).text.context_length


class FitSummary(Callback):
    """Ends a run with one line of counts: steps, samples, samples/s of the training loop, the checkpoint."""

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Lightning skips the train hooks of a resumed run that has reached max_steps already: 0 steps, 0 s
        self._start: tuple[float, int] | None = None
        self._seconds = 0.0

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start = (time.perf_counter(), trainer.global_step)  # after a resume: the restored step

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._start is not None:
            self._seconds = time.perf_counter() - self._start[0]

    @rank_zero_only
    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # after every on_train_end, so the final checkpoint is written
        steps = trainer.global_step - (self._start[1] if self._start is not None else trainer.global_step)
        batch = datamodule_batch_size(trainer.datamodule) or 0  # type: ignore[attr-defined]  # set by fit, undeclared
        samples = steps * batch * trainer.world_size * trainer.accumulate_grad_batches
        checkpoint = trainer.checkpoint_callback
        last = checkpoint.last_model_path if isinstance(checkpoint, ModelCheckpoint) else ""
        print(
            f"fit: {steps} steps this run (global step {trainer.global_step}), {samples} samples in "
            f"{self._seconds:.0f} s ({samples / max(self._seconds, 1e-9):.1f} samples/s) | "
            f"last checkpoint: {last or 'none'}"
        )


def _wants_log_progress_bar(trainer_cfg: Any) -> bool:
    """Output going to a file (a SLURM log, a benchmark's log) gets a tqdm bar: Lightning's default rich bar
    draws only on a terminal, so such a log would show no progress until the end."""
    if sys.stderr.isatty() or trainer_cfg.enable_progress_bar is False:
        return False
    configured = trainer_cfg.callbacks or []
    configured = configured if isinstance(configured, list) else [configured]
    return not any(str(getattr(c, "class_path", "")).endswith("ProgressBar") for c in configured)


class GroupViTCLI(LightningCLI):
    """LightningCLI with the `fit` verb only, a checkpoint callback in a fixed folder (so ``--ckpt_path last`` finds
    the previous run's ``last.ckpt``), data settings tied to the model config, and CSV + TensorBoard logs."""

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        return {"fit": LightningCLI.subcommands()["fit"]}

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument(
            "--torch_threads",
            type=int | None,
            default=None,
            help="Intra-op CPU threads for the training process (default: torch's choice). On a small "
            "CPU shared with loader workers, fewer threads than cores avoids OpenMP spin-waits.",
        )
        parser.add_lightning_class_args(GroupViTCheckpoint, "checkpoint")
        # checkpoints renamed into place from beside their target, loaded as plain data (see AtomicCheckpointIO)
        parser.set_defaults({"trainer.plugins": {"class_path": f"{AtomicCheckpointIO.__module__}.AtomicCheckpointIO"}})
        # A fresh run in a used folder replaces last.ckpt (Lightning would write last-v1.ckpt beside the old
        # one, and `--ckpt_path last` or an evaluation would then pick up the stale run).
        parser.set_defaults(
            {
                "checkpoint.save_last": True,
                "checkpoint.save_top_k": 0,
                "checkpoint.every_n_train_steps": 500,
                "checkpoint.enable_version_counter": False,
            }
        )
        parser.link_arguments("trainer.default_root_dir", "checkpoint.dirpath", compute_fn=_checkpoint_dir)
        # The loader must produce what the model was built for: images at its native size, tokens at its context.
        parser.link_arguments(("model.arch", "model.arch_overrides"), "data.image_size", compute_fn=_image_size)
        parser.link_arguments(("model.arch", "model.arch_overrides"), "data.context_length", compute_fn=_context_length)

    def before_instantiate_classes(self) -> None:
        threads = self.config[self.subcommand].torch_threads
        if threads:
            torch.set_num_threads(threads)
        trainer_cfg = self.config[self.subcommand].trainer
        if trainer_cfg.default_root_dir is not None:  # Lightning's default, the working folder, is not checked
            check_fit_root(trainer_cfg.default_root_dir, self.config[self.subcommand].data.shards)
        if _wants_log_progress_bar(trainer_cfg):
            self.trainer_defaults["callbacks"].append(TQDMProgressBar(refresh_rate=10))
        self._default_loggers = trainer_cfg.logger in (None, True)
        if self._default_loggers:
            trainer_cfg.logger = False  # replaced by CSV + TensorBoard below

    def after_instantiate_classes(self) -> None:
        if self._default_loggers:
            root = self.trainer.default_root_dir
            tensorboard = TensorBoardLogger(root, name="logs")
            self.trainer.loggers = [CSVLogger(root, name="logs", version=tensorboard.version), tensorboard]


def fit(argv: list[str] | None = None) -> None:
    """Run LightningCLI over GroupViT: ``argv`` is ``fit ...`` (or its other subcommands); None reads ``sys.argv``."""
    from cocu.training.data import CuratedShardsDataModule

    args = list(sys.argv[1:] if argv is None else argv)
    # the shards are split across loader workers by the dataset itself, so its length is exact
    warnings.filterwarnings("ignore", message="Your `IterableDataset` has `__len__` defined")
    # args=None lets LightningCLI read sys.argv itself; a recipe name makes us pass the resolved copy instead
    cli_args = argv
    if resolve_recipes(args) != args:
        cli_args = resolve_recipes(args)
        warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
    try:
        with stop_on_sigterm():
            GroupViTCLI(
                GroupViTModule,
                CuratedShardsDataModule,
                args=cli_args,
                save_config_kwargs={"overwrite": True},
                trainer_defaults={"callbacks": [FitSummary()]},
                parser_kwargs={"description": __doc__},
            )
    except SIGTERMException as err:  # Lightning stopped between two steps; GroupViTCheckpoint saved last.ckpt
        stop = getattr(err, "cocu_stop", None)
        print(f"error: {stop.line() if stop else STOPPED_BEFORE}", file=sys.stderr)
        raise SystemExit(EXIT_SIGTERM) from None
    except (CocuError, RuntimeError) as err:  # bad input: one line naming the file, no traceback
        line = str(err) if not isinstance(err, RuntimeError) else _loader_shard_error(err)
        if line is None and sigterm_received():  # a loader worker the same SIGTERM ended first
            print(f"error: {STOPPED_IN_STEP}", file=sys.stderr)
            raise SystemExit(EXIT_SIGTERM) from None
        if line is None:
            raise
        print(f"error: {line}", file=sys.stderr)
        raise SystemExit(1) from None


def _loader_shard_error(err: RuntimeError) -> str | None:
    """The one line of a ShardError raised in a DataLoader worker: torch re-raises it as a RuntimeError holding the
    worker's whole traceback, whose last line is ``cocu.curation.core.shards.ShardError: FILE: ...``."""
    text = str(err).strip()
    if not text.startswith("Caught ShardError"):
        return None
    return text.splitlines()[-1].partition("ShardError: ")[2] or None
