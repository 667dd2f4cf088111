"""Image augmentation of the training stream (simple, or DeiT-style with RandAugment) and its normalization."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from PIL import Image
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, create_transform
from torchvision import transforms as T

IMAGE_MEAN: tuple[float, float, float] = IMAGENET_DEFAULT_MEAN  # GroupViT normalizes with ImageNet statistics
IMAGE_STD: tuple[float, float, float] = IMAGENET_DEFAULT_STD
AUGMENTS = ("simple", "deit")


class ImageAugment:
    """Random augmentation of PIL images into one normalized float batch [B, 3, image_size, image_size].

    ``simple``: random resized crop with ``crop_scale`` (default 0.5-1 of the area: the synthetic world's 64 px
    pictures hold objects of 30-60% of the side, and the reference's 0.08 would crop most of them away) and a
    horizontal flip, kept uint8 per image and normalized once per batch (the cheap path for CPU loaders).
    ``deit``: the GroupViT reference recipe through timm (groupvit.md §3): crop scale 0.08-1 bilinear, flip,
    RandAugment ``rand-m9-mstd0.5-inc1``, random erasing p 0.25 in pixel mode (colour jitter 0.4 is passed but,
    as in the reference, timm disables it when RandAugment is on); timm normalizes per image, before erasing.
    """

    def __init__(self, augment: str, image_size: int, crop_scale: tuple[float, float] = (0.5, 1.0)):
        if augment == "simple":
            self.sample = T.Compose(
                [
                    T.RandomResizedCrop(image_size, scale=crop_scale, interpolation=T.InterpolationMode.BILINEAR),
                    T.RandomHorizontalFlip(),
                    T.PILToTensor(),
                ]
            )
            self._mean = torch.tensor(IMAGE_MEAN).view(1, 3, 1, 1) * 255
            self._std = torch.tensor(IMAGE_STD).view(1, 3, 1, 1) * 255
        elif augment == "deit":
            self.sample = create_transform(
                image_size,
                is_training=True,
                scale=(0.08, 1.0),
                interpolation="bilinear",
                hflip=0.5,
                color_jitter=0.4,
                auto_augment="rand-m9-mstd0.5-inc1",
                re_prob=0.25,
                re_mode="pixel",
                re_count=1,
                mean=IMAGE_MEAN,
                std=IMAGE_STD,
            )
            _keep_posterize_bits(self.sample)
        else:
            raise ValueError(f"augment must be one of {', '.join(AUGMENTS)}, got '{augment}'")
        self.augment = augment

    @property
    def sends_uint8(self) -> bool:
        """``simple`` can leave normalization to the device (``normalize``); timm's ``deit`` normalizes per image."""
        return self.augment == "simple"

    def batch(self, samples: Sequence[torch.Tensor], normalize: bool = True) -> torch.Tensor:
        """The batch, normalized, or (``normalize=False``, ``simple`` only) as uint8 pixels for ``normalize``."""
        stacked = torch.stack(list(samples))
        if self.augment == "simple" and normalize:
            return self.normalize(stacked)
        return stacked

    def normalize(self, pixels: torch.Tensor) -> torch.Tensor:
        """uint8 pixels [B, 3, H, W] to the normalized float batch, wherever they are (the same operations)."""
        if pixels.dtype != torch.uint8:
            return pixels
        return pixels.float().sub_(self._mean.to(pixels.device)).div_(self._std.to(pixels.device))

    def __call__(self, images: Sequence[Image.Image]) -> torch.Tensor:
        return self.batch([self.sample(image) for image in images])


def _keep_posterize_bits(transform: T.Compose) -> None:
    """Stop timm's PosterizeIncreasing from asking Pillow for 0 bits, which Pillow >= 11 refuses.

    With ``m9-mstd0.5`` the magnitude reaches its cap of 10 on ~2% of draws, where the op keeps 4 - 4 = 0 bits:
    old Pillow returned a black image, Pillow 13 (installed) raises ValueError and would kill the loader
    worker. Capping that one op's magnitude just below 10 keeps 1 bit there and leaves every other draw as is.
    """
    for step in transform.transforms:
        for op in getattr(step, "ops", ()):
            if op.name == "PosterizeIncreasing":
                op.magnitude_max = 9.99
