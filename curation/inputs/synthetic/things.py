"""The "thing" concepts of the synthetic world: small icons drawn from primitives.

Each thing is a list of strokes in unit coordinates (the icon's box is [-0.5, 0.5]^2). A stroke
paints the icon's mask (value 1) or cuts a hole into it (value 0), so that near-confusable things
differ only in a detail, the way "cup" and "mug" do: a ring is a ball with a hole, a window is a
frame with a cross, a mushroom is an umbrella with a thick stem.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

# A stroke: (kind, value, geometry...). kinds: ellipse/rect take a box; poly takes points;
# line takes points and a width; chord takes a box and start/end angles.
Stroke = tuple


@dataclass(frozen=True)
class Thing:
    name: str
    plural: str
    group: str
    strokes: tuple[Stroke, ...]


def _star(points: int, outer: float, inner: float) -> list[tuple[float, float]]:
    out = []
    for i in range(points * 2):
        radius = outer if i % 2 == 0 else inner
        angle = math.pi * i / points - math.pi / 2
        out.append((radius * math.cos(angle), radius * math.sin(angle)))
    return out


def _petals() -> list[Stroke]:
    strokes: list[Stroke] = []
    for i in range(5):
        angle = 2 * math.pi * i / 5 - math.pi / 2
        x, y = 0.27 * math.cos(angle), 0.27 * math.sin(angle)
        strokes.append(("ellipse", 1, (x - 0.2, y - 0.2, x + 0.2, y + 0.2)))
    strokes.append(("ellipse", 0, (-0.09, -0.09, 0.09, 0.09)))
    return strokes


def _rays() -> list[Stroke]:
    strokes: list[Stroke] = [("ellipse", 1, (-0.28, -0.28, 0.28, 0.28))]
    for i in range(8):
        angle = 2 * math.pi * i / 8
        c, s = math.cos(angle), math.sin(angle)
        strokes.append(("line", 1, [(0.36 * c, 0.36 * s), (0.5 * c, 0.5 * s)], 0.08))
    return strokes


FULL = (-0.5, -0.5, 0.5, 0.5)
WHEELS: tuple[Stroke, ...] = (
    ("ellipse", 1, (-0.42, 0.18, -0.14, 0.46)),
    ("ellipse", 1, (0.14, 0.18, 0.42, 0.46)),
    ("ellipse", 0, (-0.32, 0.28, -0.24, 0.36)),
    ("ellipse", 0, (0.24, 0.28, 0.32, 0.36)),
)

THINGS: tuple[Thing, ...] = (
    # round
    Thing("ball", "balls", "round", (("ellipse", 1, FULL),)),
    Thing("ring", "rings", "round", (("ellipse", 1, FULL), ("ellipse", 0, (-0.27, -0.27, 0.27, 0.27)))),
    Thing(
        "coin",
        "coins",
        "round",
        (("ellipse", 1, FULL), ("ellipse", 0, (-0.37, -0.37, 0.37, 0.37)), ("ellipse", 1, (-0.3, -0.3, 0.3, 0.3))),
    ),
    Thing(
        "button",
        "buttons",
        "round",
        (("ellipse", 1, FULL),)
        + tuple(("ellipse", 0, (x - 0.08, y - 0.08, x + 0.08, y + 0.08)) for x in (-0.14, 0.14) for y in (-0.14, 0.14)),
    ),
    Thing(
        "clock",
        "clocks",
        "round",
        (
            ("ellipse", 1, FULL),
            ("ellipse", 0, (-0.4, -0.4, 0.4, 0.4)),
            ("line", 1, [(0, 0), (0, -0.32)], 0.08),
            ("line", 1, [(0, 0), (0.24, 0)], 0.08),
        ),
    ),
    # square
    Thing("box", "boxes", "square", (("rect", 1, (-0.45, -0.45, 0.45, 0.45)),)),
    Thing(
        "frame", "frames", "square", (("rect", 1, (-0.45, -0.45, 0.45, 0.45)), ("rect", 0, (-0.29, -0.29, 0.29, 0.29)))
    ),
    Thing(
        "window",
        "windows",
        "square",
        (("rect", 1, (-0.45, -0.45, 0.45, 0.45)),)
        + tuple(("rect", 0, (x0, y0, x0 + 0.3, y0 + 0.3)) for x0 in (-0.35, 0.05) for y0 in (-0.35, 0.05)),
    ),
    Thing(
        "book", "books", "square", (("rect", 1, (-0.35, -0.47, 0.35, 0.47)), ("rect", 0, (-0.22, -0.47, -0.15, 0.47)))
    ),
    Thing(
        "envelope",
        "envelopes",
        "square",
        (("rect", 1, (-0.5, -0.32, 0.5, 0.32)), ("line", 0, [(-0.5, -0.32), (0, 0.06), (0.5, -0.32)], 0.07)),
    ),
    # pointed
    Thing("pyramid", "pyramids", "pointed", (("poly", 1, [(0, -0.45), (0.5, 0.45), (-0.5, 0.45)]),)),
    Thing(
        "tent",
        "tents",
        "pointed",
        (("poly", 1, [(0, -0.45), (0.5, 0.45), (-0.5, 0.45)]), ("poly", 0, [(0, 0.0), (0.15, 0.45), (-0.15, 0.45)])),
    ),
    Thing(
        "flag",
        "flags",
        "pointed",
        (("rect", 1, (-0.42, -0.5, -0.32, 0.5)), ("poly", 1, [(-0.32, -0.5), (0.45, -0.25), (-0.32, 0.0)])),
    ),
    Thing(
        "arrow",
        "arrows",
        "pointed",
        (("rect", 1, (-0.5, -0.09, 0.1, 0.09)), ("poly", 1, [(0.1, -0.32), (0.5, 0), (0.1, 0.32)])),
    ),
    Thing(
        "tree",
        "trees",
        "pointed",
        (("poly", 1, [(0, -0.5), (0.4, 0.22), (-0.4, 0.22)]), ("rect", 1, (-0.09, 0.22, 0.09, 0.5))),
    ),
    # stick with a head
    Thing(
        "umbrella",
        "umbrellas",
        "stick",
        (
            ("chord", 1, (-0.5, -0.45, 0.5, 0.45), 180, 360),
            ("rect", 1, (-0.035, 0, 0.035, 0.42)),
            ("line", 1, [(0.0, 0.42), (0.08, 0.5), (0.16, 0.42)], 0.06),
        ),
    ),
    Thing(
        "mushroom",
        "mushrooms",
        "stick",
        (("chord", 1, (-0.5, -0.45, 0.5, 0.45), 180, 360), ("rect", 1, (-0.16, 0, 0.16, 0.46))),
    ),
    Thing(
        "lollipop",
        "lollipops",
        "stick",
        (("ellipse", 1, (-0.3, -0.5, 0.3, 0.1)), ("rect", 1, (-0.035, 0.1, 0.035, 0.5))),
    ),
    Thing(
        "balloon",
        "balloons",
        "stick",
        (
            ("ellipse", 1, (-0.27, -0.5, 0.27, 0.14)),
            ("poly", 1, [(0, 0.12), (0.06, 0.2), (-0.06, 0.2)]),
            ("line", 1, [(0, 0.2), (0.08, 0.3), (-0.06, 0.4), (0.04, 0.5)], 0.04),
        ),
    ),
    Thing(
        "spoon", "spoons", "stick", (("ellipse", 1, (-0.2, -0.5, 0.2, -0.04)), ("rect", 1, (-0.045, -0.06, 0.045, 0.5)))
    ),
    Thing(
        "key",
        "keys",
        "stick",
        (
            ("ellipse", 1, (-0.21, -0.5, 0.21, -0.08)),
            ("ellipse", 0, (-0.09, -0.38, 0.09, -0.2)),
            ("rect", 1, (-0.045, -0.1, 0.045, 0.5)),
            ("rect", 1, (0.045, 0.28, 0.17, 0.35)),
            ("rect", 1, (0.045, 0.41, 0.17, 0.48)),
        ),
    ),
    # containers
    Thing("cup", "cups", "container", (("poly", 1, [(-0.36, -0.4), (0.36, -0.4), (0.22, 0.45), (-0.22, 0.45)]),)),
    Thing(
        "mug",
        "mugs",
        "container",
        (
            ("ellipse", 1, (0.06, -0.22, 0.5, 0.26)),
            ("ellipse", 0, (0.18, -0.1, 0.38, 0.14)),
            ("rect", 1, (-0.4, -0.4, 0.18, 0.45)),
        ),
    ),
    Thing(
        "bottle",
        "bottles",
        "container",
        (
            ("rect", 1, (-0.25, -0.12, 0.25, 0.5)),
            ("poly", 1, [(-0.25, -0.1), (0.25, -0.1), (0.1, -0.25), (-0.1, -0.25)]),
            ("rect", 1, (-0.09, -0.5, 0.09, -0.2)),
        ),
    ),
    Thing(
        "vase",
        "vases",
        "container",
        (
            ("ellipse", 1, (-0.36, -0.16, 0.36, 0.5)),
            ("rect", 1, (-0.12, -0.44, 0.12, 0.0)),
            ("rect", 1, (-0.21, -0.5, 0.21, -0.4)),
        ),
    ),
    Thing(
        "bucket",
        "buckets",
        "container",
        (
            ("poly", 1, [(-0.4, -0.15), (0.4, -0.15), (0.3, 0.5), (-0.3, 0.5)]),
            ("line", 1, [(-0.38, -0.15), (-0.3, -0.42), (0.0, -0.52), (0.3, -0.42), (0.38, -0.15)], 0.06),
        ),
    ),
    # vehicles
    Thing(
        "car",
        "cars",
        "vehicle",
        (
            ("rect", 1, (-0.5, -0.05, 0.5, 0.3)),
            ("poly", 1, [(-0.3, -0.05), (0.3, -0.05), (0.2, -0.35), (-0.2, -0.35)]),
            ("poly", 0, [(-0.18, -0.1), (0.18, -0.1), (0.12, -0.27), (-0.12, -0.27)]),
        )
        + WHEELS,
    ),
    Thing(
        "bus",
        "buses",
        "vehicle",
        (("rect", 1, (-0.5, -0.35, 0.5, 0.3)),)
        + tuple(("rect", 0, (x, -0.25, x + 0.14, -0.08)) for x in (-0.4, -0.17, 0.06, 0.29))
        + WHEELS,
    ),
    Thing(
        "truck",
        "trucks",
        "vehicle",
        (
            ("rect", 1, (-0.5, -0.42, 0.12, 0.3)),
            ("rect", 1, (0.16, -0.2, 0.5, 0.3)),
            ("rect", 0, (0.24, -0.13, 0.42, 0.02)),
        )
        + WHEELS,
    ),
    Thing(
        "boat",
        "boats",
        "vehicle",
        (
            ("poly", 1, [(-0.5, 0.12), (0.5, 0.12), (0.34, 0.42), (-0.34, 0.42)]),
            ("rect", 1, (-0.03, -0.5, 0.03, 0.12)),
            ("poly", 1, [(0.06, -0.45), (0.4, 0.06), (0.06, 0.06)]),
        ),
    ),
    # nature
    Thing("star", "stars", "nature", (("poly", 1, _star(5, 0.5, 0.21)),)),
    Thing("flower", "flowers", "nature", tuple(_petals())),
    Thing("sun", "suns", "nature", tuple(_rays())),
    Thing("moon", "moons", "nature", (("ellipse", 1, FULL), ("ellipse", 0, (-0.22, -0.56, 0.72, 0.42)))),
    Thing(
        "heart",
        "hearts",
        "nature",
        (
            ("ellipse", 1, (-0.5, -0.42, 0.02, 0.1)),
            ("ellipse", 1, (-0.02, -0.42, 0.5, 0.1)),
            ("poly", 1, [(-0.47, -0.05), (0.47, -0.05), (0, 0.48)]),
        ),
    ),
    Thing(
        "leaf",
        "leaves",
        "nature",
        (
            ("poly", 1, [(0, -0.5), (0.28, -0.2), (0.3, 0.1), (0, 0.38), (-0.3, 0.1), (-0.28, -0.2)]),
            ("line", 0, [(0, -0.36), (0, 0.3)], 0.05),
            ("rect", 1, (-0.035, 0.36, 0.035, 0.5)),
        ),
    ),
    Thing(
        "fish",
        "fish",
        "nature",
        (
            ("ellipse", 1, (-0.5, -0.25, 0.2, 0.25)),
            ("poly", 1, [(0.12, 0), (0.5, -0.3), (0.5, 0.3)]),
            ("ellipse", 0, (-0.36, -0.1, -0.24, 0.02)),
        ),
    ),
    # tools and buildings
    Thing(
        "hammer", "hammers", "tool", (("rect", 1, (-0.42, -0.46, 0.42, -0.2)), ("rect", 1, (-0.08, -0.2, 0.08, 0.5)))
    ),
    Thing(
        "ladder",
        "ladders",
        "tool",
        (("rect", 1, (-0.36, -0.5, -0.25, 0.5)), ("rect", 1, (0.25, -0.5, 0.36, 0.5)))
        + tuple(("rect", 1, (-0.25, y, 0.25, y + 0.08)) for y in (-0.38, -0.13, 0.12, 0.36)),
    ),
    Thing(
        "candle", "candles", "tool", (("rect", 1, (-0.16, -0.12, 0.16, 0.5)), ("ellipse", 1, (-0.1, -0.5, 0.1, -0.2)))
    ),
    Thing(
        "bell",
        "bells",
        "tool",
        (
            ("poly", 1, [(-0.1, -0.45), (0.1, -0.45), (0.3, -0.1), (0.42, 0.28), (-0.42, 0.28), (-0.3, -0.1)]),
            ("ellipse", 1, (-0.1, 0.32, 0.1, 0.5)),
        ),
    ),
    Thing(
        "house",
        "houses",
        "tool",
        (
            ("rect", 1, (-0.4, -0.05, 0.4, 0.5)),
            ("poly", 1, [(-0.5, -0.03), (0, -0.5), (0.5, -0.03)]),
            ("rect", 0, (-0.09, 0.2, 0.09, 0.5)),
        ),
    ),
    Thing(
        "kite",
        "kites",
        "tool",
        (
            ("poly", 1, [(0, -0.5), (0.3, -0.12), (0, 0.25), (-0.3, -0.12)]),
            ("line", 1, [(0, 0.25), (0.1, 0.35), (-0.06, 0.44), (0.06, 0.5)], 0.05),
        ),
    ),
    Thing("diamond", "diamonds", "tool", (("poly", 1, [(0, -0.5), (0.36, 0), (0, 0.5), (-0.36, 0)]),)),
)
