"""The "stuff" concepts of the synthetic world: textured regions that fill the background.

Stuff is told apart by texture as much as by hue (grass has blades, water has waves, a wall has
bricks), each with random jitter, so a model has to look at the pattern and not one colour.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from PIL import Image

Texture = Callable[[np.random.Generator, int, int], np.ndarray]


def _noise(rng: np.random.Generator, h: int, w: int, cell: float) -> np.ndarray:
    """Smooth noise in [-1, 1]: random values on a coarse grid, bilinearly upsampled."""
    gh, gw = max(2, int(round(h / cell)) + 1), max(2, int(round(w / cell)) + 1)
    coarse = rng.uniform(-1, 1, size=(gh, gw)).astype(np.float32)
    return np.asarray(Image.fromarray(coarse, mode="F").resize((w, h), Image.Resampling.BILINEAR))


def _tint(base: tuple[float, float, float], rng: np.random.Generator, jitter: float = 14.0) -> np.ndarray:
    return np.clip(np.asarray(base, np.float32) + rng.uniform(-jitter, jitter, 3), 0, 255)


def _shade(colour: np.ndarray, light: np.ndarray) -> np.ndarray:
    """Colour times a per-pixel brightness field (``light`` around 0)."""
    return colour[None, None, :] * (1.0 + light[..., None])


def grass(rng, h, w):
    blades = _noise(rng, h, w, 1.5) * 0.25 + np.repeat(_noise(rng, 1 + h // 6, w, 1.2), 6, axis=0)[:h] * 0.2
    return _shade(_tint((70, 150, 55), rng), blades)


def sky(rng, h, w):
    ramp = np.linspace(-0.18, 0.18, h, dtype=np.float32)[:, None] * np.ones((1, w), np.float32)
    return _shade(_tint((110, 170, 235), rng), ramp + _noise(rng, h, w, 16) * 0.05)


def water(rng, h, w):
    y = np.arange(h, dtype=np.float32)[:, None]
    x = np.arange(w, dtype=np.float32)[None, :]
    period = rng.uniform(5, 8) * h / 64
    waves = np.sin(2 * np.pi * (y + 1.5 * np.sin(x / (period * 1.7))) / period)
    return _shade(_tint((40, 100, 160), rng), waves * 0.22 + _noise(rng, h, w, 6) * 0.06)


def sand(rng, h, w):
    speckle = rng.uniform(-1, 1, size=(h, w)).astype(np.float32)
    return _shade(_tint((215, 190, 130), rng), speckle * 0.12 + _noise(rng, h, w, 12) * 0.08)


def wall(rng, h, w):
    brick_h = max(3, int(round(h / rng.uniform(7, 9))))
    brick_w = brick_h * 2
    y = np.arange(h)[:, None]
    x = np.arange(w)[None, :] + (y // brick_h % 2) * (brick_w // 2)
    mortar = (y % brick_h == 0) | (x % brick_w == 0)
    out = _shade(_tint((165, 75, 55), rng), _noise(rng, h, w, 4) * 0.08)
    out[mortar] = _tint((200, 195, 185), rng, 8)
    return out


def snow(rng, h, w):
    speckle = rng.uniform(-1, 1, size=(h, w)).astype(np.float32)
    return _shade(_tint((238, 242, 248), rng, 6), speckle * 0.04 + _noise(rng, h, w, 10) * 0.05)


def wood(rng, h, w):
    x = np.arange(w, dtype=np.float32)[None, :]
    wobble = _noise(rng, h, w, 20) * 4
    grain = np.sin(2 * np.pi * (x + wobble) / rng.uniform(3.5, 5.5) * 64 / max(h, 1) * 0.5)
    return _shade(_tint((140, 95, 55), rng), grain * 0.18 + _noise(rng, h, w, 8) * 0.05)


def road(rng, h, w):
    speckle = rng.uniform(-1, 1, size=(h, w)).astype(np.float32)
    return _shade(_tint((95, 95, 100), rng, 8), speckle * 0.15)


STUFF: dict[str, Texture] = {
    "grass": grass,
    "sky": sky,
    "water": water,
    "sand": sand,
    "wall": wall,
    "snow": snow,
    "wood": wood,
    "road": road,
}


def render_stuff(name: str, rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    return np.clip(STUFF[name](rng, h, w), 0, 255)
