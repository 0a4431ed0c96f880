"""A finished patch test's report: ``results.json``, ``table.md``, ``table.tsv``, ``examples.png``.

One row per (size, position token), pooled over the token's places: the images and trials,
the share of trials whose top-1 became CLASS_B and the share no longer CLASS_A (patch, and the
noise patch at the same size and places), the mean change of P(CLASS_B) and the median rank
of CLASS_B. The headline is the row where the patch turns the most trials into CLASS_B.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ...config import Config
from ...ops.patches import patch_side, position_label, resize_patch
from ...progress import plural
from ._spec import PatchTestSpec
from ._trials import place_offsets, trial_images

__all__ = ["aggregate", "headline", "headline_row", "pick_examples", "table_markdown", "table_tsv", "examples_figure", "COLUMNS"]

COLUMNS = ("size", "px", "position", "images", "trials", "to_b_patch", "to_b_noise", "not_a_patch", "not_a_noise",
           "dprob_b_patch", "dprob_b_noise", "median_rank_b_patch", "median_rank_b_noise")


def _r(x: float) -> float:
    return round(float(x), 6)


def aggregate(cfg: Config, spec: PatchTestSpec, data: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    """The table's rows from the units' arrays, concatenated over units (images in order)."""
    rows = []
    n = int(data["ids"].size)
    for si, frac in enumerate(cfg.patch_test.sizes):
        for pos, (lo, hi) in zip(cfg.patch_test.positions, place_offsets(list(cfg.patch_test.positions))):
            top1 = data["top1"][:, si, lo:hi]
            dprob = data["prob_b"][:, si, lo:hi].astype(np.float64) - data["orig_prob_b"][:, None, None]
            row: dict[str, Any] = {"size": frac, "px": patch_side(frac, spec.input_size), "position": pos, "images": n,
                                   "trials": int(n * (hi - lo))}
            for v, variant in enumerate(("patch", "noise")):
                row[f"to_b_{variant}"] = _r((top1[..., v] == spec.b).mean()) if n else math.nan
                row[f"not_a_{variant}"] = _r((top1[..., v] != spec.a).mean()) if n else math.nan
                row[f"dprob_b_{variant}"] = _r(dprob[..., v].mean()) if n else math.nan
                row[f"median_rank_b_{variant}"] = float(np.median(data["rank_b"][:, si, lo:hi, v])) if n else math.nan
            rows.append(row)
    return rows


def _pct(x: float) -> str:
    return "-" if x != x else f"{100 * x:.0f}%"


def headline_row(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The row the headline tells of: where the patch turns the most trials into CLASS_B or, when it
    turns none, where it moves the most off CLASS_A (ties: the smaller size, the earlier position)."""
    best = max(rows, key=lambda r: (r["to_b_patch"], -r["size"]))
    return best if best["to_b_patch"] > 0 else max(rows, key=lambda r: (r["not_a_patch"], -r["size"]))


def headline(spec: PatchTestSpec, rows: list[dict[str, Any]]) -> str:
    """One sentence on :func:`headline_row`, against the noise patch."""
    n, r = rows[0]["images"], headline_row(rows)
    where = f"at size {r['size']:g} ({r['px']} px), {position_label(r['position'])}"
    if r["to_b_patch"] > 0:
        return (f"patch flips {_pct(r['to_b_patch'])} of {plural(n, spec.name_a + ' image')} to {spec.name_b} {where} "
                f"(noise: {_pct(r['to_b_noise'])})")
    return (f"patch flips none of {plural(n, spec.name_a + ' image')} to {spec.name_b}; it moves {_pct(r['not_a_patch'])} off "
            f"{spec.name_a} {where} (noise: {_pct(r['not_a_noise'])})")


def _cells(r: dict[str, Any]) -> list[str]:
    def d(x: float) -> str:
        return "-" if x != x else f"{x:+.4f}"

    def m(x: float) -> str:
        return "-" if x != x else f"{x:g}"

    return [f"{r['size']:g}", str(r["px"]), r["position"], str(r["images"]), str(r["trials"]),
            _pct(r["to_b_patch"]), _pct(r["to_b_noise"]), _pct(r["not_a_patch"]), _pct(r["not_a_noise"]),
            d(r["dprob_b_patch"]), d(r["dprob_b_noise"]), m(r["median_rank_b_patch"]), m(r["median_rank_b_noise"])]


def table_markdown(spec: PatchTestSpec, rows: list[dict[str, Any]]) -> str:
    """The rows as a Markdown table (percentages of trials; ΔP = mean change of P(CLASS_B))."""
    a, b = spec.name_a, spec.name_b
    head = ["size", "px", "position", "images", "trials", f"-> {b}: patch", "noise", f"not {a}: patch", "noise",
            f"ΔP({b}): patch", "noise", f"rank of {b}: patch", "noise"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" if i < 3 else "---:" for i in range(len(head))) + "|"]
    lines += ["| " + " | ".join(_cells(r)) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def table_tsv(rows: list[dict[str, Any]]) -> str:
    """The rows as TSV with the column names of ``results.json`` (shares as fractions)."""
    out = ["\t".join(COLUMNS)]
    for r in rows:
        out.append("\t".join(f"{r[c]:g}" if isinstance(r[c], float) else str(r[c]) for c in COLUMNS))
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------- examples.png

_PANEL_MIN = 192
_GREEN, _RED, _GREY = (0, 120, 40), (180, 20, 20), (60, 60, 60)


def _font(size: int) -> Any:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: one bitmap size
        return ImageFont.load_default()


def _fit(draw: ImageDraw.ImageDraw, text: str, font: Any, width: int) -> str:
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "…", font=font) > width:
        text = text[:-1]
    return text + "…"


def _wrap(draw: ImageDraw.ImageDraw, text: str, font: Any, width: int, lines: int) -> list[str]:
    """``text`` in at most ``lines`` lines of ``width`` pixels (words kept whole; the last cut with …)."""
    out: list[str] = []
    words = text.split()
    while words and len(out) < lines - 1:
        k = len(words)
        while k > 1 and draw.textlength(" ".join(words[:k]), font=font) > width:
            k -= 1
        out.append(" ".join(words[:k]))
        words = words[k:]
    if words:
        out.append(_fit(draw, " ".join(words), font, width))
    return out


def _prob(p: float) -> str:
    return f"{p:.3f}" if p >= 0.001 else f"{p:.0e}"


def pick_examples(spec: PatchTestSpec, data: dict[str, np.ndarray], si: int, j: int, k: int) -> list[int]:
    """Up to ``k`` images to show: those the patch turned into CLASS_B first, then those it moved off
    CLASS_A, then the rest, each group in image order."""
    top1 = data["top1"][:, si, j, 0]
    order = np.argsort(np.where(top1 == spec.b, 0, np.where(top1 != spec.a, 1, 2)), kind="stable")
    return [int(i) for i in order[:k]]


def examples_figure(cfg: Config, spec: PatchTestSpec, data: dict[str, np.ndarray], images: np.ndarray, shown: list[int],
                    row: dict[str, Any], title: str) -> Image.Image:
    """A grid: one line per image ``shown`` (indices into ``data``; ``images`` [len(shown), S, S, 3] are
    those images, in that order), original / with the patch / with the noise patch (at the first
    place of ``row``'s position), each captioned with its top-1 class and probability and the rank of
    CLASS_B."""
    import torch

    names, side = spec.class_names, spec.input_size
    si = list(cfg.patch_test.sizes).index(row["size"])
    j = place_offsets(list(cfg.patch_test.positions))[list(cfg.patch_test.positions).index(row["position"])][0]
    patch = resize_patch(spec.patch, row["px"])
    ids = [int(data["ids"][i]) for i in shown]
    x = torch.from_numpy(images)
    patched, noised = trial_images(cfg, x, ids, patch, si, j, data["places"][shown, si, j].astype(np.int64))
    panel = max(side, _PANEL_MIN)
    font, small, big = _font(13), _font(11), _font(15)
    pad, cap, head = 8, 36, 70
    w = 3 * panel + 4 * pad
    h = head + len(shown) * (panel + cap + pad) + pad
    fig = Image.new("RGB", (w, h), (255, 255, 255))
    draw = ImageDraw.Draw(fig)
    for k, line in enumerate(_wrap(draw, title, big, w - 2 * pad, 2)):
        draw.text((pad, 6 + 19 * k), line, fill=(0, 0, 0), font=big)
    cols = ["original", f"with the patch ({row['px']} px, {row['position']})", "with a noise patch (same place)"]
    for c, text in enumerate(cols):
        draw.text((pad + c * (panel + pad), 48), _fit(draw, text, font, panel), fill=_GREY, font=font)
    for n, i in enumerate(shown):
        y0 = head + n * (panel + cap + pad)
        pics = (images[n], patched[n].numpy(), noised[n].numpy())
        for c, (pic, v) in enumerate(zip(pics, (None, 0, 1))):
            x0 = pad + c * (panel + pad)
            img = Image.fromarray(np.ascontiguousarray(pic))
            fig.paste(img.resize((panel, panel), Image.Resampling.BILINEAR) if panel != side else img, (x0, y0))
            pre, sel = ("orig_", (i,)) if v is None else ("", (i, si, j, v))
            top1, p1 = int(data[pre + "top1"][sel]), float(data[pre + "prob_top1"][sel])
            prob_b, rank_b = float(data[pre + "prob_b"][sel]), int(data[pre + "rank_b"][sel])
            colour = _GREEN if top1 == spec.b else _RED if top1 != spec.a else _GREY
            draw.text((x0, y0 + panel + 3), _fit(draw, f"{names[top1]} {p1:.2f}", font, panel), fill=colour, font=font)
            draw.text((x0, y0 + panel + 19), _fit(draw, f"P({spec.name_b}) {_prob(prob_b)}, rank {rank_b}", small, panel),
                      fill=_GREY, font=small)
    return fig
