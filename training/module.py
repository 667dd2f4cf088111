"""`GroupViTModule`: the science of GroupViT pretraining as a LightningModule (model, loss, optimiser, schedule).

The reference recipe (NVlabs/GroupViT, its default config): AdamW without weight decay on 1-D parameters and biases;
base, warm-up and minimum learning rates all scaled by global_batch / 4096; linear warm-up then cosine decay, updated
every step.
Everything about devices, precision, checkpoints and logging belongs to the Trainer.
"""

from __future__ import annotations

from typing import Any, cast

import lightning as L
import torch
from lightning.fabric.utilities.data import AttributeDict
from lightning.pytorch.utilities import rank_zero_warn
from lightning.pytorch.utilities.types import OptimizerLRSchedulerConfig
from torch import nn

from cocu.training.loss import groupvit_loss
from cocu.training.model import GroupViT, get_config
from cocu.training.optim import warmup_cosine, weight_decay_groups

MULTI_LABEL_POOLS = ("image", "best-group")


def datamodule_batch_size(datamodule: Any) -> int | None:
    """Per-rank batch size of a data module: its `batch_size`, or its stream config's (`CuratedShardsDataModule`)."""
    size = getattr(datamodule, "batch_size", None)
    return size if size is not None else getattr(getattr(datamodule, "config", None), "batch_size", None)


class GroupViTModule(L.LightningModule):
    """GroupViT pretraining on batches ``{"image": [B, 3, H, W], "text": [B, 1+K, T]}`` (caption first, then K prompts).

    Args:
        arch: a named model config (`cocu.training.model.MODEL_CONFIGS`).
        arch_overrides: nested overrides of that config, e.g. ``{"vision": {"drop_path_rate": 0.0}}``.
        base_lr, warmup_lr, min_lr: learning rates at the reference batch; each is multiplied by
            global_batch / lr_reference_batch.
        warmup_epochs: warm-up length in epochs of the data module's `num_samples`; `warmup_steps` overrides it.
        multi_label_weight: weight of the multi-label term (0 turns it off).
        multi_label_pool: ``image`` (GroupViT: the multi-label term scores the image vector) or ``best-group`` (a
            departure, not GroupViT's method: each image's best-matching final group; see `cocu.training.loss`).
    """

    def __init__(
        self,
        arch: str = "groupvit-s",
        arch_overrides: dict[str, Any] | None = None,
        base_lr: float = 1.6e-3,
        warmup_lr: float = 4e-6,
        min_lr: float = 4e-5,
        lr_reference_batch: int = 4096,
        weight_decay: float = 0.05,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        warmup_epochs: float = 2.0,
        warmup_steps: int | None = None,
        multi_label_weight: float = 1.0,
        multi_label_pool: str = "image",
    ):
        super().__init__()
        if multi_label_pool not in MULTI_LABEL_POOLS:
            raise ValueError(f"multi_label_pool must be one of {MULTI_LABEL_POOLS}, got {multi_label_pool!r}")
        self.save_hyperparameters()
        self.model = GroupViT(get_config(arch, arch_overrides))

    def setup(self, stage: str) -> None:
        # The projectors' BatchNorm must see the global batch, as the reference's SyncBatchNorm does. PyTorch's
        # SyncBatchNorm runs on accelerators only; CPU DDP (tests, debugging) keeps per-process statistics.
        if self.trainer.world_size > 1:
            if self.trainer.strategy.root_device.type == "cpu":
                rank_zero_warn(
                    "DDP on CPU: SyncBatchNorm needs an accelerator, so the projectors' BatchNorm uses "
                    "per-process batch statistics"
                )
            else:
                self.model = nn.SyncBatchNorm.convert_sync_batchnorm(self.model)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        images, text = batch["image"], batch["text"]
        group_x = None
        if self.settings.multi_label_pool == "best-group":
            image_x, text_x, prompt_x, group_x = self.model.forward_with_groups(images, text)
        else:
            image_x, text_x, prompt_x = self.model(images, text)
        out = groupvit_loss(
            image_x,
            text_x,
            prompt_x,
            self.model.logit_scale_value(),
            self.model.multi_label_logit_scale_value(),
            self.settings.multi_label_weight,
            group_x,
        )
        b = images.shape[0]
        self.log("train/loss", out.loss, prog_bar=True, sync_dist=True, batch_size=b)
        self.log_dict(
            {
                "train/contrastive": out.contrastive,
                "train/multi_label": out.multi_label,
                "train/logit_scale": self.model.logit_scale_value(),
                "train/lr": self.trainer.optimizers[0].param_groups[0]["lr"],
            },
            batch_size=b,
        )
        return out.loss

    def _schedule(self) -> tuple[float, int, int]:
        """(lr scale, warm-up steps, total steps) from the trainer and the data module, never from
        `trainer.estimated_stepping_batches`, which would exhaust an iterable loader (Lightning #20550)."""
        trainer = self.trainer
        datamodule = trainer.datamodule  # type: ignore[attr-defined]  # Lightning sets it at fit time, undeclared
        batch_size = datamodule_batch_size(datamodule)
        if batch_size is None:
            raise ValueError("GroupViTModule needs a data module that knows its batch size to scale the learning rate")
        global_batch = batch_size * trainer.world_size * trainer.accumulate_grad_batches
        num_samples = getattr(datamodule, "num_samples", None)
        steps_per_epoch = num_samples // global_batch if num_samples else None
        if trainer.max_steps > 0:
            total = trainer.max_steps
        elif steps_per_epoch and trainer.max_epochs and trainer.max_epochs > 0:
            total = trainer.max_epochs * steps_per_epoch
        else:
            raise ValueError(
                "cannot size the learning-rate schedule: set trainer.max_steps, or max_epochs with a data "
                "module that knows num_samples"
            )
        if self.settings.warmup_steps is not None:
            warmup = self.settings.warmup_steps
        elif steps_per_epoch:
            warmup = round(self.settings.warmup_epochs * steps_per_epoch)
        else:
            raise ValueError(
                "cannot size the warm-up: set model.warmup_steps, or use a data module that knows num_samples"
            )
        return global_batch / self.settings.lr_reference_batch, min(warmup, total), total

    @property
    def settings(self) -> AttributeDict:
        """The saved hyperparameters: ``save_hyperparameters`` stores an AttributeDict; Lightning types any mapping."""
        return cast(AttributeDict, self.hparams)

    def configure_optimizers(self) -> OptimizerLRSchedulerConfig:
        hp = self.settings
        scale, warmup, total = self._schedule()
        peak = hp.base_lr * scale
        # The fused kernel (CPU and CUDA) is ~6x faster than the per-parameter loop on the 49k-row token embedding.
        optimizer = torch.optim.AdamW(
            weight_decay_groups(self.model, hp.weight_decay),
            lr=peak,
            betas=tuple(hp.betas),
            eps=hp.eps,
            fused=self.device.type in ("cpu", "cuda"),
        )

        # A plain function (not a callable object) so LambdaLR saves no state for it: a resumed run recomputes the
        # schedule from its own settings and restores only the step count.
        def factor(step: int) -> float:
            return (
                warmup_cosine(
                    step,
                    peak=peak,
                    warmup_start=hp.warmup_lr * scale,
                    minimum=hp.min_lr * scale,
                    warmup=warmup,
                    total=total,
                )
                / peak
            )

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # What evaluation needs beside the weights, as plain data: `load_groupvit` rebuilds the model from it.
        checkpoint["groupvit_config"] = self.model.config.to_dict()
