"""How a thing's strokes are painted into a mask: the one place that turns the icon table into pixels."""

from __future__ import annotations

from PIL import ImageDraw

from cocu.curation.inputs.synthetic.things import Thing


def draw_thing(draw: ImageDraw.ImageDraw, thing: Thing, cx: float, cy: float, size: float) -> None:
    """Paint ``thing`` centred at (cx, cy), ``size`` pixels wide, into a mode-"L" mask (255 = thing)."""

    def xy(x: float, y: float) -> tuple[float, float]:
        return cx + x * size, cy + y * size

    for stroke in thing.strokes:
        kind, value = stroke[0], 255 * stroke[1]
        if kind in ("ellipse", "rect", "chord"):
            x0, y0, x1, y1 = stroke[2]
            box = [*xy(x0, y0), *xy(x1, y1)]
            if kind == "ellipse":
                draw.ellipse(box, fill=value)
            elif kind == "rect":
                draw.rectangle(box, fill=value)
            else:
                draw.chord(box, stroke[3], stroke[4], fill=value)
        elif kind == "poly":
            draw.polygon([xy(x, y) for x, y in stroke[2]], fill=value)
        elif kind == "line":
            draw.line([xy(x, y) for x, y in stroke[2]], fill=value, width=max(1, round(stroke[3] * size)))
        else:
            raise ValueError(f"unknown stroke kind {kind!r} in thing {thing.name!r}")
