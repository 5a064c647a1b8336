"""Line plots as a standalone SVG file, without a plotting library (the project does not depend on one).

`line_plot(path, series, title=..., x_label=..., y_label=...)`: series {name: [(x, y), ...]}, one coloured
polyline each, linear axes from 0 with five labelled ticks, a legend in the top-left corner.
`panels(path, [Panel(series, title, x_label, y_label), ...])`: several such plots side by side in one file.
"""
from __future__ import annotations

from html import escape
from pathlib import Path
from typing import NamedTuple

COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"]
WIDTH, HEIGHT = 720, 420
LEFT, RIGHT, TOP, BOTTOM = 70, 20, 40, 50


class Panel(NamedTuple):
    series: dict[str, list[tuple[float, float]]]
    title: str
    x_label: str
    y_label: str


def _ticks(top: float) -> list[float]:
    return [top * i / 4 for i in range(5)]


def _panel(panel: Panel, x0: float) -> list[str]:
    """The SVG elements of one plot whose left edge is at x0."""
    points = [p for values in panel.series.values() for p in values]
    if not points:
        raise ValueError(f"{panel.title}: nothing to plot")
    x_max = max(x for x, _ in points) or 1.0
    y_max = max(y for _, y in points) * 1.05 or 1.0
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    left = x0 + LEFT

    def sx(x):
        return left + plot_w * x / x_max

    def sy(y):
        return TOP + plot_h * (1 - y / y_max)

    parts = [f'<text x="{x0 + WIDTH / 2}" y="22" text-anchor="middle" font-size="14">{escape(panel.title)}</text>',
             f'<line x1="{left}" y1="{TOP + plot_h}" x2="{left + plot_w}" y2="{TOP + plot_h}" stroke="black"/>',
             f'<line x1="{left}" y1="{TOP}" x2="{left}" y2="{TOP + plot_h}" stroke="black"/>']
    for x in _ticks(x_max):
        parts.append(f'<text x="{sx(x):.1f}" y="{TOP + plot_h + 16}" text-anchor="middle">{x:g}</text>')
    for y in _ticks(y_max):
        parts.append(f'<line x1="{left}" y1="{sy(y):.1f}" x2="{left + plot_w}" y2="{sy(y):.1f}" stroke="#ddd"/>')
        parts.append(f'<text x="{left - 6}" y="{sy(y) + 4:.1f}" text-anchor="end">{y:.3g}</text>')
    parts.append(f'<text x="{left + plot_w / 2}" y="{HEIGHT - 12}" text-anchor="middle">{escape(panel.x_label)}</text>')
    parts.append(f'<text x="{x0 + 16}" y="{TOP + plot_h / 2}" text-anchor="middle" '
                 f'transform="rotate(-90 {x0 + 16} {TOP + plot_h / 2})">{escape(panel.y_label)}</text>')
    for i, (name, values) in enumerate(panel.series.items()):
        colour = COLOURS[i % len(COLOURS)]
        line = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in sorted(values))
        parts.append(f'<polyline fill="none" stroke="{colour}" stroke-width="2" points="{line}"/>')
        parts.append(f'<rect x="{left + 12}" y="{TOP + 8 + 18 * i}" width="14" height="3" fill="{colour}"/>')
        parts.append(f'<text x="{left + 32}" y="{TOP + 13 + 18 * i}">{escape(name)}</text>')
    return parts


def panels(path, plots: list[Panel]) -> Path:
    """The plots side by side, left to right, in one SVG file."""
    width = WIDTH * len(plots)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{HEIGHT}" '
             f'font-family="sans-serif" font-size="12">', f'<rect width="{width}" height="{HEIGHT}" fill="white"/>']
    for i, plot in enumerate(plots):
        parts += _panel(plot, i * WIDTH)
    parts.append("</svg>")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(parts) + "\n", encoding="utf-8")
    return path


def line_plot(path, series: dict[str, list[tuple[float, float]]], title: str, x_label: str, y_label: str) -> Path:
    return panels(path, [Panel(series, title, x_label, y_label)])
