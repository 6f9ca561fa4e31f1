"""The ablation report, computed from the rows of results.jsonl: mean ± std over seeds per variant,
each variant's difference from the first one paired by seed, the chance levels, and a chart of R@1 and
attention overlap per variant (PIL only).

A row is {"variant", "seed", "metrics" (evaluate.py's metrics.json), ...}.
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

from PIL import Image, ImageDraw

from tools.figures import BLACK, GREY, MARGIN, WHITE, WIDTH, font, line_height, text_width

RECALLS = ("R@1", "R@5", "R@10", "R@50")
COLUMNS = (*RECALLS, "overlap")
DIGITS = {**dict.fromkeys(RECALLS, 2), "overlap": 3}
NO_VALUE = "—"
BLUE = (60, 105, 185)
ORANGE = (225, 130, 40)
GRID = (232, 232, 232)


@dataclass
class Stat:
    """Mean and sample standard deviation (n - 1) of n values; std is None for a single value."""
    mean: float
    std: float | None
    n: int


def mean_std(values: list[float]) -> Stat | None:
    if not values:
        return None
    return Stat(statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None, len(values))


def overlap_of(metrics: dict) -> float | None:
    """metrics["overlap"] (grain -> mean shared attention mass) averaged over the grains; None without one."""
    grains = metrics.get("overlap") or {}
    return statistics.fmean(grains.values()) if grains else None


def by_seed(rows: list[dict]) -> dict[str, dict[str, dict[int, float]]]:
    """variant -> column -> seed -> value; a column the variant lacks (overlap) holds no seed."""
    table: dict = {}
    for row in rows:
        columns = table.setdefault(row["variant"], {c: {} for c in COLUMNS})
        values = {**{k: row["metrics"]["overall"][k] for k in RECALLS}, "overlap": overlap_of(row["metrics"])}
        for column, value in values.items():
            if value is not None:
                columns[column][row["seed"]] = value
    return table


def paired_difference(reference: dict[int, float], other: dict[int, float]) -> Stat | None:
    """other[seed] - reference[seed] over the seeds both have, as mean ± std: a seed fixes the data order
    and the initialisation, so pairing by seed removes their share of the spread."""
    seeds = sorted(reference.keys() & other.keys())
    return mean_std([other[s] - reference[s] for s in seeds])


def best_marks(stats: list[Stat | None], lowest: bool = False, digits: int = 2) -> list[bool]:
    """Which entries hold the best mean as displayed (the highest, or the lowest); ties are all marked."""
    shown = [round(s.mean, digits) if s is not None else None for s in stats]
    present = [v for v in shown if v is not None]
    if not present:
        return [False] * len(stats)
    best = min(present) if lowest else max(present)
    return [v == best for v in shown]


def format_stat(stat: Stat | None, digits: int, bold: bool = False, signed: bool = False) -> str:
    """'12.34 ± 0.56'; '12.34 ± n/a' with one seed; '—' without a value."""
    if stat is None:
        return NO_VALUE
    mean = f"{stat.mean:+.{digits}f}" if signed else f"{stat.mean:.{digits}f}"
    spread = "n/a" if stat.std is None else f"{stat.std:.{digits}f}"
    return f"**{mean} ± {spread}**" if bold else f"{mean} ± {spread}"


def chance_levels(metrics: dict) -> dict[str, float]:
    """R@K (%) of a random ranking with one target per query: K / (G - 1) (the reference is left out of
    its gallery of G images), averaged over categories."""
    sizes = [m["gallery_size"] for m in metrics["per_category"].values()]
    return {k: statistics.fmean(100 * min(1.0, int(k[2:]) / max(1, g - 1)) for g in sizes) for k in RECALLS}


def ordered_variants(rows: list[dict], order: list[str]) -> list[str]:
    """The variants with results: those of `order` first, in its order, then the others as they appear."""
    present = list(dict.fromkeys(r["variant"] for r in rows))
    return [v for v in order if v in present] + [v for v in present if v not in order]


def seeds_of(rows: list[dict], variant: str) -> set[int]:
    return {r["seed"] for r in rows if r["variant"] == variant}


# ----------------------------------------------------------------------------- results.md

def markdown(rows: list[dict], order: list[str], command: str) -> str:
    """results.md: the mean ± std table, the paired differences from order[0], chance levels, runs, command."""
    variants = ordered_variants(rows, order)
    values = by_seed(rows)
    stats = {v: {c: mean_std(list(values[v][c].values())) for c in COLUMNS} for v in variants}
    marks = {c: best_marks([stats[v][c] for v in variants], lowest=c == "overlap", digits=DIGITS[c])
             for c in COLUMNS}
    first = rows[0]["metrics"]
    lines = [f"# Ablation: {first['dataset']} {first['split']}", "",
             "Mean ± sample std over seeds (n/a with one seed); recalls in %.", "",
             "| variant | seeds | " + " | ".join(COLUMNS) + " |", "|---" * (len(COLUMNS) + 2) + "|"]
    for i, v in enumerate(variants):
        cells = [format_stat(stats[v][c], DIGITS[c], bold=marks[c][i]) for c in COLUMNS]
        lines.append(f"| `{v}` | {len(seeds_of(rows, v))} | " + " | ".join(cells) + " |")
    lines += ["", "Bold: the best value of each column: the highest recall, and the **lowest** overlap "
              "(the attention mass the modified and preserved parts share, averaged over the model's grains; "
              f"lower is more exclusive). {NO_VALUE}: the variant has no attention overlap.", ""]
    lines += paired_table(rows, order[0] if order else variants[0], variants, values)
    chance = chance_levels(first)
    lines += ["", "Chance level (a random ranking, one target per query: K / (G − 1), G the gallery size, "
              "averaged over categories): " + ", ".join(f"{k} {chance[k]:.2f}" for k in RECALLS) + ".", ""]
    seeds = sorted({r["seed"] for r in rows})
    lines += [f"{len(rows)} runs: {len(variants)} variants × seeds {', '.join(map(str, seeds))}.", "",
              f"Command: `{command}`", ""]
    return "\n".join(lines)


def paired_table(rows: list[dict], reference: str, variants: list[str], values: dict) -> list[str]:
    lines = [f"## Difference from `{reference}`, paired by seed", ""]
    if reference not in values:
        return lines + [f"(no result of `{reference}` yet)"]
    lines += [f"Per seed: the variant minus `{reference}` run with the same seed (same data order and "
              "initialisation); mean ± sample std of these differences over the seeds both have.", "",
              "| variant | paired seeds | " + " | ".join(f"Δ {c}" for c in COLUMNS) + " |",
              "|---" * (len(COLUMNS) + 2) + "|"]
    for v in variants:
        if v == reference:
            continue
        cells = [format_stat(paired_difference(values[reference][c], values[v][c]), DIGITS[c], signed=True)
                 for c in COLUMNS]
        paired = len(seeds_of(rows, v) & seeds_of(rows, reference))
        lines.append(f"| `{v}` | {paired} | " + " | ".join(cells) + " |")
    return lines


# ----------------------------------------------------------------------------- results.png

def figure(rows: list[dict], order: list[str]) -> Image.Image:
    """Two stacked panels, one bar per variant with ± std error bars: R@1, then attention overlap."""
    variants = ordered_variants(rows, order)
    values = by_seed(rows)
    names = [f"{v}  (n={len(seeds_of(rows, v))})" for v in variants]
    first = rows[0]["metrics"]
    big, small = font(20), font(15)
    canvas = Image.new("RGB", (WIDTH, 200 + 2 * (len(variants) + 6) * (line_height(small) + 12)), WHITE)
    draw = ImageDraw.Draw(canvas)
    draw.text((MARGIN, MARGIN), f"Ablation: {first['dataset']} {first['split']} · mean ± std over seeds",
              font=big, fill=BLACK)
    y = MARGIN + line_height(big) + 12
    for column, title, axis, color in (
            ("R@1", "R@1", "R@1 (%)", BLUE),
            ("overlap", "Attention overlap (lower is more exclusive)",
             "shared attention mass of the modified and preserved parts, mean over grains", ORANGE)):
        stats = [mean_std(list(values[v][column].values())) for v in variants]
        y = bar_panel(draw, y, title, axis, names, stats, DIGITS[column], color, big, small) + 16
    return canvas.crop((0, 0, WIDTH, y))


def bar_panel(draw, y: int, title: str, axis: str, names: list[str], stats: list[Stat | None], digits: int,
              color, big, small) -> int:
    """Horizontal bars from 0 to each mean with a ± std whisker; returns the y below the axis label."""
    draw.text((MARGIN, y), title, font=big, fill=BLACK)
    y += line_height(big) + 8
    lh, row_h = line_height(small), line_height(small) + 12
    labels = [format_stat(s, digits) if s else "no attention overlap" for s in stats]
    name_width = min(0.4 * WIDTH, max(text_width(draw, n, small) for n in names))
    x0 = MARGIN + name_width + 12
    x1 = WIDTH - MARGIN - max(text_width(draw, label, small) for label in labels) - 12
    top = max((s.mean + (s.std or 0.0) for s in stats if s), default=0.0)
    step = nice_step(top / 5) if top > 0 else 1.0
    axis_max = step * max(1, math.ceil(top / step - 1e-9))

    def x_of(value: float) -> float:
        return x0 + (x1 - x0) * max(0.0, value) / axis_max

    ticks = [i * step for i in range(round(axis_max / step) + 1)]
    bottom = y + len(names) * row_h
    for t in ticks:
        draw.line([x_of(t), y, x_of(t), bottom], fill=GRID)
    for name, stat, label in zip(names, stats, labels):
        mid = y + row_h / 2
        name = fit(draw, name, small, name_width)
        draw.text((x0 - 8 - text_width(draw, name, small), mid - lh / 2), name, font=small, fill=BLACK)
        if stat is None:
            draw.text((x0 + 6, mid - lh / 2), label, font=small, fill=GREY)
        else:
            draw.rectangle([x0, mid - row_h * 0.3, x_of(stat.mean), mid + row_h * 0.3], fill=color)
            if stat.std:
                lo, hi = x_of(stat.mean - stat.std), x_of(stat.mean + stat.std)
                draw.line([lo, mid, hi, mid], fill=BLACK, width=2)
                for x in (lo, hi):
                    draw.line([x, mid - 5, x, mid + 5], fill=BLACK, width=2)
            right = x_of(stat.mean + (stat.std or 0.0))
            draw.text((right + 8, mid - lh / 2), label, font=small, fill=BLACK)
        y += row_h
    draw.line([x0, y - len(names) * row_h, x0, y], fill=BLACK, width=1)
    draw.line([x0, y, x1, y], fill=BLACK, width=1)
    decimals = max(0, -math.floor(math.log10(step)))
    for t in ticks:
        draw.line([x_of(t), y, x_of(t), y + 4], fill=BLACK)
        text = f"{t:.{decimals}f}"
        draw.text((x_of(t) - text_width(draw, text, small) / 2, y + 6), text, font=small, fill=BLACK)
    y += 6 + lh + 4
    draw.text((x0 + (x1 - x0 - text_width(draw, axis, small)) / 2, y), axis, font=small, fill=GREY)
    return int(y + lh)


def nice_step(raw: float) -> float:
    """The smallest 1, 2 or 5 × 10^k at least `raw`: axis ticks at round numbers."""
    power = 10 ** math.floor(math.log10(raw))
    return next(m * power for m in (1, 2, 5, 10) if m * power >= raw * (1 - 1e-9))


def fit(draw, text: str, face, width: float) -> str:
    """`text`, shortened with an ellipsis to fit `width` pixels."""
    if text_width(draw, text, face) <= width:
        return text
    while text and text_width(draw, text + "…", face) > width:
        text = text[:-1]
    return text + "…"
