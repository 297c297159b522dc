"""Completions drawn with every token coloured by the temperature that sampled it (HTML and PNG).

IntroLLM's interpretability claim (docs/methods.md) is that learned temperatures are high at reasoning
branch points and low during arithmetic and final answers. These renderings make that visible: blue = cold,
red = hot, on a fixed scale (the head's [tau_min, tau_max] when given), plus the mean tau per kind of token.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from pathlib import Path

from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize, to_hex
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from transformers import PreTrainedTokenizerBase

from kelvin.rl.rollouts import Rollouts

COLOUR_MAP = "coolwarm"
TOKEN_CLASSES = ("digits", "operators", "letters", "other")
OPERATOR_CHARS = set("+-*/=<>|^%()")


def token_class(token: str) -> str:
    """A coarse kind of token: digits (computation), operators, letters (words), other (space, punctuation, specials
    such as </s>)."""
    text = token.strip()
    if len(text) > 2 and text.startswith("<") and text.endswith(">"):
        return "other"
    if text and all(ch.isdigit() for ch in text):
        return "digits"
    if text and all(ch in OPERATOR_CHARS for ch in text):
        return "operators"
    if text and any(ch.isalpha() for ch in text):
        return "letters"
    return "other"


def mean_tau_by_class(tokens: Sequence[Sequence[str]], taus: Sequence[Sequence[float]]) -> dict[str, tuple[float, int]]:
    """(mean tau, token count) for every token class present."""
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    for row_tokens, row_taus in zip(tokens, taus, strict=True):
        for token, tau in zip(row_tokens, row_taus, strict=True):
            kind = token_class(token)
            sums[kind] = sums.get(kind, 0.0) + float(tau)
            counts[kind] = counts.get(kind, 0) + 1
    return {k: (sums[k] / counts[k], counts[k]) for k in TOKEN_CLASSES if k in counts}


def _scale(taus: Sequence[Sequence[float]], tau_range: tuple[float, float] | None) -> Normalize:
    if tau_range is None:
        flat = [float(t) for row in taus for t in row] or [1.0]
        low, high = min(flat), max(flat)
        tau_range = (low, high) if high - low > 1e-6 else (low - 0.05, high + 0.05)
    return Normalize(vmin=tau_range[0], vmax=tau_range[1], clip=True)


def _text_colour(background: tuple[float, ...]) -> str:
    luminance = 0.299 * background[0] + 0.587 * background[1] + 0.114 * background[2]
    return "#000000" if luminance > 0.5 else "#ffffff"


def _display(token: str) -> str:
    """What a token looks like in a box: newlines as a return arrow, an empty token as an empty-set sign."""
    return token.replace("\n", "\u23ce") if token else "\u2205"


def render_html(
    tokens: Sequence[Sequence[str]],
    taus: Sequence[Sequence[float]],
    path: str | Path,
    tau_range: tuple[float, float] | None = None,
    titles: Sequence[str] | None = None,
    heading: str = "Per-token sampling temperature",
) -> None:
    """An HTML page (inline styles only) with a colour legend, mean tau per token class and one block per sample."""
    _check_shapes(tokens, taus)
    norm = _scale(taus, tau_range)
    cmap = colormaps[COLOUR_MAP]
    stops = ", ".join(f"{to_hex(cmap(i / 10))} {i * 10}%" for i in range(11))
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>" + html.escape(heading) + "</title></head>",
        "<body style='font-family: sans-serif; max-width: 60em; margin: 1em auto;'>",
        f"<h2>{html.escape(heading)}</h2>",
        "<div style='display: flex; align-items: center; gap: 0.5em; margin-bottom: 0.5em;'>",
        f"<span>cold &tau; = {norm.vmin:.2f}</span>",
        f"<span style='display: inline-block; width: 20em; height: 1em; background: linear-gradient(to right, {stops});"
        " border: 1px solid #888;'></span>",
        f"<span>hot &tau; = {norm.vmax:.2f}</span></div>",
        "<p style='color: #444; font-size: 90%;'>Each token's background is the temperature that sampled it; hover a "
        "token for its value. IntroLLM's claim: hot at reasoning branch points, cold in arithmetic and answers.</p>",
    ]
    summary = mean_tau_by_class(tokens, taus)
    if summary:
        rows = "".join(
            f"<tr><td style='padding: 0 1em;'>{kind}</td><td style='padding: 0 1em;'>{mean:.3f}</td>"
            f"<td style='padding: 0 1em;'>{count}</td></tr>"
            for kind, (mean, count) in summary.items()
        )
        parts.append(
            "<table style='border-collapse: collapse; margin-bottom: 1em;'><tr><th>tokens</th><th>mean &tau;</th>"
            f"<th>count</th></tr>{rows}</table>"
        )
    for i, (row_tokens, row_taus) in enumerate(zip(tokens, taus, strict=True)):
        title = titles[i] if titles is not None else f"sample {i}"
        spans = []
        for token, tau in zip(row_tokens, row_taus, strict=True):
            background = cmap(norm(float(tau)))
            text = html.escape(_display(token)).replace(" ", "&nbsp;")
            spans.append(
                f"<span title='tau={float(tau):.3f}' style='background: {to_hex(background)}; "
                f"color: {_text_colour(background)}; padding: 1px 0; border-right: 1px solid #fff;'>{text}</span>"
            )
            if "\n" in token:
                spans.append("<br>")
        parts.append(
            f"<div style='margin-bottom: 1em;'><div style='font-weight: bold;'>{html.escape(title)}</div>"
            f"<div style='font-family: monospace; font-size: 110%; line-height: 1.6;'>{''.join(spans)}</div></div>"
        )
    parts.append("</body></html>")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text("\n".join(parts), encoding="utf-8")


def _layout(
    tokens: Sequence[Sequence[str]], titles: Sequence[str], width: int
) -> tuple[list[tuple[int, float, str]], list[tuple[int, float, float, str, int, int]]]:
    """Line/column positions in character cells: (line, column, title) and (line, column, cells, text, row, index)."""
    headers, boxes = [], []
    line = 0
    for r, row_tokens in enumerate(tokens):
        headers.append((line, 0.0, titles[r]))
        line, column = line + 1, 0
        for k, token in enumerate(row_tokens):
            text = _display(token)
            cells = max(len(text), 1)
            if column + cells > width and column > 0:
                line, column = line + 1, 0
            boxes.append((line, float(column), float(cells), text, r, k))
            column += cells
            if "\n" in token:
                line, column = line + 1, 0
        line += 2
    return headers, boxes


def render_png(
    tokens: Sequence[Sequence[str]],
    taus: Sequence[Sequence[float]],
    path: str | Path,
    tau_range: tuple[float, float] | None = None,
    titles: Sequence[str] | None = None,
    heading: str = "Per-token sampling temperature",
    width: int = 80,
) -> None:
    """A PNG: tokens as monospaced text boxes filled with their tau's colour, wrapped at `width` cells, colour bar."""
    _check_shapes(tokens, taus)
    titles = list(titles) if titles is not None else [f"sample {i}" for i in range(len(tokens))]
    norm = _scale(taus, tau_range)
    cmap = colormaps[COLOUR_MAP]
    headers, boxes = _layout(tokens, titles, width)
    n_lines = max([b[0] for b in boxes] + [h[0] for h in headers] + [0]) + 1
    # Sizes in inches: title band, one text line per row of cells, then the colour bar and its label.
    cell_in, line_in, top_in, bar_band_in, side_in = 0.09, 0.2, 0.75, 0.9, 0.5
    fig_w, fig_h = width * cell_in + 2 * side_in, top_in + n_lines * line_in + bar_band_in
    figure = Figure(figsize=(fig_w, fig_h), dpi=120)
    FigureCanvasAgg(figure)
    axes = figure.add_axes((side_in / fig_w, bar_band_in / fig_h, width * cell_in / fig_w, n_lines * line_in / fig_h))
    axes.set_xlim(0, width)
    axes.set_ylim(n_lines, 0)
    axes.axis("off")
    font_size = cell_in * 72 / 0.62  # a monospaced glyph advances ~0.6 em
    for line, column, title in headers:
        axes.text(column, line + 0.5, title, va="center", ha="left", fontsize=font_size, fontweight="bold")
    for line, column, cells, text, r, k in boxes:
        background = cmap(norm(float(taus[r][k])))
        axes.add_patch(Rectangle((column, line + 0.05), cells, 0.9, facecolor=background, edgecolor="white", lw=0.3))
        axes.text(
            column + cells / 2,
            line + 0.5,
            text,
            va="center",
            ha="center",
            family="monospace",
            fontsize=font_size,
            color=_text_colour(background),
        )
    colour_axes = figure.add_axes((0.25, 0.5 / fig_h, 0.5, 0.15 / fig_h))
    bar = figure.colorbar(ScalarMappable(norm=norm, cmap=cmap), cax=colour_axes, orientation="horizontal")
    bar.set_label("sampling temperature \u03c4 (blue = cold, red = hot)")
    figure.suptitle(heading, y=1 - 0.15 / fig_h)
    summary = mean_tau_by_class(tokens, taus)
    if summary:
        line = "mean \u03c4:  " + "   ".join(f"{k} {mean:.3f} (n={n})" for k, (mean, n) in summary.items())
        figure.text(0.5, 1 - 0.5 / fig_h, line, ha="center", va="center", fontsize=9, color="#333333")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(str(path))


def render_token_temperatures(
    tokens: Sequence[Sequence[str]],
    taus: Sequence[Sequence[float]],
    html_path: str | Path | None,
    png_path: str | Path | None,
    tau_range: tuple[float, float] | None = None,
    titles: Sequence[str] | None = None,
    heading: str = "Per-token sampling temperature",
) -> None:
    """Both renderings (either path may be None). tokens[i][k] was sampled at taus[i][k]."""
    if html_path is not None:
        render_html(tokens, taus, html_path, tau_range, titles, heading)
    if png_path is not None:
        render_png(tokens, taus, png_path, tau_range, titles, heading)


def rollout_tokens(
    rollouts: Rollouts, tokenizer: PreTrainedTokenizerBase, max_rows: int = 8
) -> tuple[list[list[str]], list[list[float]]]:
    """Token strings and taus of the first `max_rows` completions of a `Rollouts` (completion tokens only)."""
    tokens, taus = [], []
    for b in range(min(max_rows, rollouts.batch_size)):
        keep = rollouts.completion_mask[b].bool()
        ids = rollouts.completion_ids[b][keep].tolist()
        tokens.append([tokenizer.decode([i]) for i in ids])
        taus.append([float(t) for t in rollouts.temperature[b][keep].tolist()])
    return tokens, taus


def _check_shapes(tokens: Sequence[Sequence[str]], taus: Sequence[Sequence[float]]) -> None:
    if len(tokens) != len(taus) or any(len(a) != len(b) for a, b in zip(tokens, taus)):
        raise ValueError("render_token_temperatures needs one tau per token: tokens and taus differ in shape.")
    if any(not math.isfinite(float(t)) for row in taus for t in row):
        raise ValueError("render_token_temperatures got a non-finite temperature.")
