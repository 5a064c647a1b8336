"""Line charts drawn with PIL, for the report's training plots (no plotting library needed).

A chart is a list of named series, each a list of (x, y) points; it comes back as an RGB PIL image.
"""
from __future__ import annotations

from PIL import Image, ImageDraw, ImageFont

COLOURS = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (255, 127, 14), (148, 103, 189), (140, 86, 75)]
MARGIN_LEFT, MARGIN_RIGHT, MARGIN_TOP, MARGIN_BOTTOM = 64, 16, 34, 44


def _ticks(low: float, high: float, count: int = 5) -> list[float]:
    if high <= low:
        return [low]
    return [low + (high - low) * i / (count - 1) for i in range(count)]


def _label(value: float) -> str:
    if value == 0:
        return "0"
    if abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 1:
        return f"{value:.1f}"
    return f"{value:.3f}"


def line_chart(series: dict[str, list[tuple[float, float]]], title: str, x_label: str, y_label: str,
               size: tuple[int, int] = (560, 300), y_range: tuple[float, float] | None = None) -> Image.Image:
    """One line per series (with dots when it has few points) on shared axes, with a legend."""
    width, height = size
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default()
    points = [p for values in series.values() for p in values]
    if not points:
        raise ValueError(f"line_chart '{title}': no points to draw")
    xs, ys = [x for x, _ in points], [y for _, y in points]
    x_low, x_high = min(xs), max(xs)
    y_low, y_high = y_range if y_range else (min(ys), max(ys))
    if x_high == x_low:
        x_high = x_low + 1
    if y_high == y_low:
        y_high = y_low + 1
    left, right, top, bottom = MARGIN_LEFT, width - MARGIN_RIGHT, MARGIN_TOP, height - MARGIN_BOTTOM

    def to_pixel(x, y):
        return (left + (x - x_low) / (x_high - x_low) * (right - left),
                bottom - (y - y_low) / (y_high - y_low) * (bottom - top))

    draw.text((left, 8), title, fill="black", font=font)
    for y in _ticks(y_low, y_high):
        _, py = to_pixel(x_low, y)
        draw.line([(left, py), (right, py)], fill=(225, 225, 225))
        draw.text((6, py - 6), _label(y), fill=(80, 80, 80), font=font)
    for x in _ticks(x_low, x_high):
        px, _ = to_pixel(x, y_low)
        draw.line([(px, bottom), (px, bottom + 4)], fill="black")
        draw.text((px - 12, bottom + 6), _label(x), fill=(80, 80, 80), font=font)
    draw.rectangle([left, top, right, bottom], outline="black")
    draw.text(((left + right) // 2 - 3 * len(x_label), height - 16), x_label, fill="black", font=font)
    draw.text((6, top - 14), y_label, fill="black", font=font)

    legend_y = top + 6
    for i, (name, values) in enumerate(series.items()):
        colour = COLOURS[i % len(COLOURS)]
        pixels = [to_pixel(x, y) for x, y in sorted(values)]
        if len(pixels) > 1:
            draw.line(pixels, fill=colour, width=2)
        if len(pixels) <= 20:
            for px, py in pixels:
                draw.ellipse([px - 3, py - 3, px + 3, py + 3], fill=colour)
        draw.line([(right - 130, legend_y + 6), (right - 112, legend_y + 6)], fill=colour, width=3)
        draw.text((right - 106, legend_y), name, fill="black", font=font)
        legend_y += 14
    return image
