"""Drawing for the toy dataset: character sprites and backgrounds as numpy arrays.

Arrays: S is the frame side in pixels; images are uint8 [S, S, 3], shape masks bool [S, S].
Every character is a distinct shape AND a distinct saturated colour with a black outline, so that it
stays identifiable at 64 px on any background even when small; shapes are drawn without antialiasing
so that masks and boxes are exact. Sizes are given for a 64 px frame and scale with S.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

OUTLINE = (0, 0, 0)
EYE_WHITE = (255, 255, 255)


@dataclass(frozen=True)
class ToyCharacter:
    name: str
    gender: str
    shape: str
    colour: tuple[int, int, int]


CHARACTERS = (
    ToyCharacter("Ada", "female", "circle", (230, 40, 40)),
    ToyCharacter("Bob", "male", "square", (40, 80, 240)),
    ToyCharacter("Cleo", "female", "triangle", (60, 220, 60)),
    ToyCharacter("Dan", "male", "diamond", (255, 150, 20)),
    ToyCharacter("Eve", "female", "star", (235, 60, 220)),
    ToyCharacter("Finn", "male", "cross", (40, 225, 225)),
    ToyCharacter("Kit", "neutral", "hourglass", (255, 235, 40)),
)
BACKGROUNDS = ("beach", "forest", "city", "night")
REFERENCE_BACKDROP = (245, 245, 245)


# ----------------------------------------------------------------------------------------------
# shapes


def _polygon_points(shape: str, x0: int, y0: int, side: int) -> list[list[tuple[float, float]]]:
    """Polygons (one or more) filling the box [x0, x0 + side) x [y0, y0 + side)."""
    x1, y1 = x0 + side - 1, y0 + side - 1
    cx, cy = x0 + (side - 1) / 2, y0 + (side - 1) / 2
    if shape == "square":
        return [[(x0, y0), (x1, y0), (x1, y1), (x0, y1)]]
    if shape == "triangle":
        return [[(cx, y0), (x1, y1), (x0, y1)]]
    if shape == "diamond":
        return [[(cx, y0), (x1, cy), (cx, y1), (x0, cy)]]
    if shape == "hourglass":
        return [[(x0, y0), (x1, y0), (cx, cy)], [(x0, y1), (x1, y1), (cx, cy)]]
    if shape == "cross":
        arm = side / 3
        a0, a1 = x0 + arm, x0 + side - arm - 1
        b0, b1 = y0 + arm, y0 + side - arm - 1
        return [[(a0, y0), (a1, y0), (a1, y1), (a0, y1)], [(x0, b0), (x1, b0), (x1, b1), (x0, b1)]]
    if shape == "star":
        outer, inner = (side - 1) / 2, (side - 1) / 2 * 0.45
        points = []
        for i in range(10):
            radius = outer if i % 2 == 0 else inner
            angle = -math.pi / 2 + i * math.pi / 5
            points.append((cx + radius * math.cos(angle), cy + outer * 0.1 + radius * math.sin(angle)))
        return [points]
    raise ValueError(f"unknown sprite shape '{shape}'")


def shape_mask(shape: str, x0: int, y0: int, side: int, frame: int) -> np.ndarray:
    """bool [S, S]: the pixels of `shape` in the box [x0, x0 + side) x [y0, y0 + side)."""
    canvas = Image.new("L", (frame, frame), 0)
    draw = ImageDraw.Draw(canvas)
    if shape == "circle":
        draw.ellipse([x0, y0, x0 + side - 1, y0 + side - 1], fill=255)
    else:
        for polygon in _polygon_points(shape, x0, y0, side):
            draw.polygon(polygon, fill=255)
    return np.asarray(canvas) > 0


def _erode(mask: np.ndarray) -> np.ndarray:
    """4-neighbour erosion: the inside of a shape, whose complement in the shape is its outline."""
    inner = mask.copy()
    inner[1:, :] &= mask[:-1, :]
    inner[:-1, :] &= mask[1:, :]
    inner[:, 1:] &= mask[:, :-1]
    inner[:, :-1] &= mask[:, 1:]
    return inner


def draw_character(image: np.ndarray, char: ToyCharacter, x0: int, y0: int, side: int) -> np.ndarray:
    """Paint `char` onto `image` (in place); returns its full shape mask (before any later occlusion)."""
    frame = image.shape[0]
    mask = shape_mask(char.shape, x0, y0, side, frame)
    inside = _erode(mask)
    image[mask] = OUTLINE
    image[inside] = char.colour
    if side >= 12 * frame / 64:  # a face where there is room for one: two eyes with pupils
        eye = max(2, side // 7)
        eye_y = y0 + int(side * (0.55 if char.shape == "triangle" else 0.1 if char.shape == "hourglass" else 0.35))
        for eye_x in (x0 + int(side * 0.36) - eye // 2, x0 + int(side * 0.64) - eye // 2):
            patch = np.zeros_like(mask)
            patch[eye_y:eye_y + eye, eye_x:eye_x + eye] = True
            image[patch & inside] = EYE_WHITE
            if eye >= 3:
                pupil = np.zeros_like(mask)
                pupil[eye_y + eye // 2, eye_x + eye // 2] = True
                image[pupil & inside] = OUTLINE
    return mask


# ----------------------------------------------------------------------------------------------
# backgrounds: each a colour scheme of flat regions, no 1-pixel texture (a factor-4 VAE and a small UNet
# spend their capacity on it and return it as coloured fragments); `layout` varies the regions per story


def background_layout(name: str, rng: np.random.Generator) -> dict:
    """Random but small variations of a background, drawn once per story so that it stays put."""
    if name == "beach":
        return {"horizon": rng.uniform(0.36, 0.44), "shore": rng.uniform(0.55, 0.62)}
    if name == "forest":
        return {"trees": np.sort(rng.uniform(0.0, 1.0, size=5)).tolist(), "height": rng.uniform(0.45, 0.6)}
    if name == "city":
        return {"heights": rng.uniform(0.3, 0.7, size=6).tolist()}
    if name == "night":
        return {"moon": rng.uniform(0.1, 0.3)}
    raise ValueError(f"unknown toy background '{name}'")


def draw_background(name: str, layout: dict, frame: int) -> np.ndarray:
    """uint8 [S, S, 3] full-frame background."""
    s = frame
    image = np.zeros((s, s, 3), dtype=np.uint8)
    ys, xs = np.mgrid[0:s, 0:s]
    if name == "beach":  # sky, sea, sand: three flat bands
        horizon, shore = int(layout["horizon"] * s), int(layout["shore"] * s)
        image[:] = (140, 200, 245)
        image[horizon:shore] = (20, 110, 190)
        image[shore:] = (235, 210, 150)
    elif name == "forest":  # green ground, brown trunks under dark pine canopies
        image[:] = (34, 110, 50)
        image[: int(0.15 * s)] = (190, 220, 170)
        canvas = Image.fromarray(image)
        draw = ImageDraw.Draw(canvas)
        width = max(2, s // 16)
        for t in layout["trees"]:
            x = int(t * (s - 1))
            top = int((1 - layout["height"]) * s * 0.5)
            draw.rectangle([x - width // 2, top + s // 5, x + width // 2, s - 1], fill=(110, 70, 30))
            draw.polygon([(x, top), (x + s // 8, top + s // 3), (x - s // 8, top + s // 3)], fill=(15, 70, 30))
        image = np.array(canvas)
    elif name == "city":  # grey sky, flat buildings of two greys, a dark road
        image[:] = (200, 200, 210)
        canvas = Image.fromarray(image)
        draw = ImageDraw.Draw(canvas)
        road = int(0.85 * s)
        step = s / len(layout["heights"])
        for i, h in enumerate(layout["heights"]):
            left, right, top = int(i * step), int((i + 1) * step) - 1, int((1 - h) * road)
            draw.rectangle([left, top, right, road], fill=(90, 90, 100) if i % 2 else (120, 120, 135))
        draw.rectangle([0, road, s - 1, s - 1], fill=(50, 50, 55))
        image = np.array(canvas)
    elif name == "night":  # navy sky, a crescent moon, a dark hill
        image[:] = (15, 20, 60)
        mx, my, r = int(layout["moon"] * s) + s // 8, s // 6, s // 9
        moon = (xs - mx) ** 2 + (ys - my) ** 2 <= r * r
        bite = (xs - mx - r // 2) ** 2 + (ys - my + r // 3) ** 2 <= r * r
        image[moon & ~bite] = (240, 240, 200)
        hill = ys > 0.8 * s - 0.12 * s * np.sin(xs / s * math.pi)
        image[hill] = (25, 45, 35)
    else:
        raise ValueError(f"unknown toy background '{name}'")
    return image


def draw_reference(char: ToyCharacter, frame: int) -> np.ndarray:
    """uint8 [S, S, 3]: the character centred on a plain backdrop (its reference image)."""
    image = np.empty((frame, frame, 3), dtype=np.uint8)
    image[:] = REFERENCE_BACKDROP
    side = int(frame * 0.6)
    draw_character(image, char, (frame - side) // 2, (frame - side) // 2, side)
    return image
