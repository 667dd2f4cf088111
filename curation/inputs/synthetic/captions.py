"""Captions written the way web captions are: they name the salient thing and leave out the rest.

A web caption names the largest thing, sometimes one or two more, and rarely the background
("grass", "sky"). Wording varies: templates, counts and plurals, colour and size adjectives.
Colours and sizes are attributes, never concepts. The full captions of the teacher split name
everything that is visible.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 40, 40),
    "orange": (245, 140, 30),
    "yellow": (240, 215, 40),
    "green": (50, 165, 70),
    "blue": (45, 80, 215),
    "purple": (135, 60, 185),
    "pink": (240, 135, 190),
    "brown": (125, 80, 40),
    "black": (25, 25, 25),
    "white": (248, 248, 248),
    "gray": (130, 130, 130),
    "teal": (30, 150, 150),
}
# the usual colour of each confusable group of things (see things.py)
GROUP_COLOURS: dict[str, str] = {
    "round": "red",
    "square": "orange",
    "pointed": "yellow",
    "stick": "purple",
    "container": "pink",
    "vehicle": "teal",
    "nature": "green",
    "tool": "black",
}
NUMBERS = {2: "two", 3: "three", 4: "four"}
PREPOSITIONS = {
    "grass": ("on the grass", "in the grass", "on grass"),
    "sky": ("against the sky", "under a clear sky", "against a blue sky"),
    "water": ("in the water", "floating on water", "by the water"),
    "sand": ("on the sand", "in the sand", "on sand"),
    "wall": ("against a wall", "in front of a wall", "by the wall"),
    "snow": ("in the snow", "on snow", "in fresh snow"),
    "wood": ("on wood", "on the wood", "on old wood"),
    "road": ("on the road", "on a road", "by the road"),
}
STUFF_NOUNS = {
    "grass": "grass",
    "sky": "the sky",
    "water": "water",
    "sand": "sand",
    "wall": "a wall",
    "snow": "snow",
    "wood": "wood",
    "road": "a road",
}
FRAMES = (
    "{t}",
    "{t}",
    "a photo of {t}",
    "{t} {p}",
    "{t} {p}",
    "a picture of {t} {p}",
    "close-up of {t}",
    "there is {t} {p}",
    "{t} seen from above",
    "look at {t}!",
    "{t} {p} today",
)
FRAMES_WITH_STUFF_ONLY = ("{s}", "a view of {s}", "{s} in the afternoon")


@dataclass(frozen=True)
class Seen:
    """One concept as it appears in one image."""

    name: str
    plural: str
    kind: str  # "thing" or "stuff"
    area: float
    count: int = 1
    colour: str | None = None


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def thing_phrase(seen: Seen, rng: np.random.Generator, colour_words: float = 0.55) -> str:
    """``colour_words``: the chance that the thing's colour is named. Colours are random per image, so a
    caption that names them lets a contrastive model match captions by colour and never learn shapes."""
    words = []
    if seen.colour and rng.random() < colour_words:
        words.append(seen.colour)
    if rng.random() < 0.25:
        words.insert(
            0, "small" if seen.area < 0.08 else "big" if seen.area > 0.2 else "little" if seen.area < 0.12 else "large"
        )
    if seen.count > 1:
        number = (
            NUMBERS.get(seen.count, "several") if rng.random() < 0.7 else ("some", "several", "a few")[rng.integers(3)]
        )
        return " ".join([number, *words, seen.plural])
    words.append(seen.name)
    determiner = "the" if rng.random() < 0.15 else _article(words[0])
    return " ".join([determiner, *words])


def join(phrases: list[str]) -> str:
    if len(phrases) <= 1:
        return "".join(phrases)
    return ", ".join(phrases[:-1]) + " and " + phrases[-1]


def write_caption(
    named_things: list[Seen], named_stuff: list[Seen], rng: np.random.Generator, colour_words: float = 0.55
) -> str:
    """Word a caption that names exactly ``named_things`` (salient first) and ``named_stuff``."""
    if not named_things:
        return FRAMES_WITH_STUFF_ONLY[rng.integers(len(FRAMES_WITH_STUFF_ONLY))].format(
            s=join([STUFF_NOUNS[s.name] for s in named_stuff])
        )
    things = join([thing_phrase(seen, rng, colour_words) for seen in named_things])
    if not named_stuff:
        frames = [f for f in FRAMES if "{p}" not in f]
        return frames[rng.integers(len(frames))].format(t=things)
    first, rest = named_stuff[0], named_stuff[1:]
    options = PREPOSITIONS[first.name]
    place = options[rng.integers(len(options))]
    if rest:
        place += " with " + join([STUFF_NOUNS[s.name] for s in rest])
    frames = [f for f in FRAMES if "{p}" in f]
    return frames[rng.integers(len(frames))].format(t=things, p=place)


def expected_named(others: int, q: float, cap: int) -> float:
    """E[min(Binomial(others, q), cap)]: how many non-salient things a caption names on average."""
    return sum(min(k, cap) * math.comb(others, k) * q**k * (1 - q) ** (others - k) for k in range(others + 1))


def calibrate_naming(scenes: list[tuple[int, int]], omit: float, stuff_mention: float, cap: int) -> tuple[float, float]:
    """Find the probability q of naming each non-salient thing so that, in expectation, a share
    ``omit`` of all present concepts is missing from the captions of these scenes.

    ``scenes`` holds (present things, present stuff) per image. Returns q and the expected
    omission share it gives (equal to ``omit`` unless the target is out of reach).
    """
    present = sum(t + s for t, s in scenes)

    def omitted(q: float) -> float:
        total = 0.0
        for things, stuff in scenes:
            if things == 0:  # the caption must name something: the largest stuff
                total += (stuff - 1) * (1 - stuff_mention)
            else:
                total += stuff * (1 - stuff_mention) + (things - 1) - expected_named(things - 1, q, cap)
        return total

    target = omit * present
    lo, hi = 0.0, 1.0
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if omitted(mid) > target else (lo, mid)
    q = (lo + hi) / 2
    return q, omitted(q) / max(present, 1)


def choose_named(
    things: list[Seen], stuff: list[Seen], q: float, stuff_mention: float, cap: int, rng: np.random.Generator
) -> tuple[list[Seen], list[Seen]]:
    """Web-style naming: the largest thing always, up to ``cap`` others drawn by size, stuff rarely."""
    named_stuff = [s for s in stuff if rng.random() < stuff_mention]
    if not things:
        largest = max(stuff, key=lambda s: s.area)
        return [], [largest] + [s for s in named_stuff if s is not largest]
    ordered = sorted(things, key=lambda t: -t.area)
    salient, others = ordered[0], ordered[1:]
    count = min(int(rng.binomial(len(others), q)) if others else 0, cap)
    picked: list[Seen] = []
    if count:
        weights = np.array([t.area for t in others], dtype=np.float64)
        index = rng.choice(len(others), size=count, replace=False, p=weights / weights.sum())
        picked = [others[i] for i in sorted(index)]
    return [salient, *picked], named_stuff
