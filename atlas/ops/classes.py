"""Class activation atlases, the pure parts: class names as the viewer's search matches them,
the rows that support a class, folder names (slugs) and the grid sizes chosen for a row count.

A row *supports* class k when k is among its ``top_k`` strongest stored attribution classes
and its attribution to k is above ``threshold``; a class atlas keeps the ``max_rows``
supporting rows with the highest attribution to each of its classes (the union for two).
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Sequence

import numpy as np

__all__ = ["ClassNameError", "match_class", "match_classes", "class_slug", "atlas_slug", "support", "select_rows",
           "class_grid_sizes"]


class ClassNameError(ValueError):
    """A class name that matches no class, or more than one: the message lists candidates or near names."""


_INDEX = re.compile(r"#(\d+)")


def _listing(names: Sequence[str], ks: Sequence[int], limit: int = 12) -> str:
    shown = ", ".join(f"{names[k]!r} (#{k})" for k in ks[:limit])
    return shown + (f" and {len(ks) - limit} more" if len(ks) > limit else "")


def match_class(text: str, names: Sequence[str]) -> int:
    """The class index ``text`` names, matched like the viewer's search: case-insensitive, an exact
    name first (as written, then in any case), else the one name containing it; ``#<index>`` names
    a class by its index.

    Raises :class:`ClassNameError` when no name matches (listing near names) or several do
    (listing them: pass the full name, or ``#<index>`` when two classes share a name)."""
    q = " ".join(text.split()).lower()
    m = _INDEX.fullmatch(q)
    if m:
        k = int(m.group(1))
        if k >= len(names):
            raise ClassNameError(f"class #{k} does not exist: the network has {len(names)} classes (#0 to #{len(names) - 1})")
        return k
    if not q:
        raise ClassNameError("empty class name: pass a class name such as --class 'great white shark'")
    same = [k for k, n in enumerate(names) if " ".join(n.split()) == " ".join(text.split())]
    if len(same) == 1:  # exactly as written: ImageNet's 'Cardigan' (a dog) and 'cardigan' (a sweater)
        return same[0]
    low = [n.lower() for n in names]
    exact = [k for k, n in enumerate(low) if n == q]
    if len(exact) == 1:
        return exact[0]
    if exact:
        raise ClassNameError(f"class name {text!r} is shared by {_listing(names, exact)}: pass #<index> to choose one")
    found = [k for k, n in enumerate(low) if q in n]
    if len(found) == 1:
        return found[0]
    if found:
        found.sort(key=lambda k: (low[k].index(q) != 0, len(low[k]), k))
        raise ClassNameError(f"class name {text!r} is ambiguous: it matches {_listing(names, found)}; "
                             "pass more of the name (or #<index>)")
    near = difflib.get_close_matches(q, low, n=5, cutoff=0.5)
    hint = f"; near names: {', '.join(repr(names[low.index(n)]) for n in near)}" if near else \
        "; no class name is near it (classes are the network's, e.g. " + ", ".join(repr(n) for n in names[:3]) + ")"
    raise ClassNameError(f"no class is named {text!r}{hint}")


def match_classes(texts: Sequence[str], names: Sequence[str]) -> list[int]:
    """:func:`match_class` for each of one or two texts; the classes in index order, without repeats."""
    if not 1 <= len(texts) <= 2:
        raise ClassNameError(f"a class atlas has one class, or two to compare; got {len(texts)}")
    ks = sorted({match_class(t, names) for t in texts})
    if len(ks) < len(texts):
        raise ClassNameError(f"{texts[0]!r} and {texts[1]!r} name the same class {names[ks[0]]!r}: "
                             "pass two different classes to compare")
    return ks


def class_slug(k: int, names: Sequence[str]) -> str:
    """Folder-safe name of class ``k``: lower case, runs of other characters as ``-``; ``-<k>`` added
    when another class gives the same (two classes with one name)."""
    def plain(name: str) -> str:
        return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "class"

    mine = plain(names[k])
    shared = sum(plain(n) == mine for n in names) > 1
    return f"{mine}-{k}" if shared else mine


def atlas_slug(ks: Sequence[int], names: Sequence[str]) -> str:
    """The class atlas's folder name: its classes' slugs joined by ``--`` (``snorkel--scuba-diver``)."""
    return "--".join(class_slug(k, names) for k in ks)


def support(attr_classes: np.ndarray, attr_values: np.ndarray, status: np.ndarray, k: int, threshold: float,
            top_k: int) -> np.ndarray:
    """float64 [n]: each row's attribution to class ``k`` where the row supports it (ok, k among its
    first ``top_k`` stored classes, attribution > ``threshold``), else -inf."""
    cls = np.asarray(attr_classes)[:, :top_k]
    val = np.asarray(attr_values, np.float64)[:, :top_k]
    hit = (cls == k) & (val > threshold) & (np.asarray(status) == 1)[:, None]
    out = np.full(len(cls), -np.inf)
    rows, cols = np.nonzero(hit)
    out[rows] = val[rows, cols]
    return out


def select_rows(attr_classes: np.ndarray, attr_values: np.ndarray, status: np.ndarray, classes: Sequence[int],
                threshold: float, top_k: int, max_rows: int) -> tuple[np.ndarray, list[int]]:
    """(sorted rows, rows per class): per class the ``max_rows`` supporting rows of highest attribution
    (ties: the lower row), the union in row order."""
    picked, counts = [], []
    for k in classes:
        a = support(attr_classes, attr_values, status, k, threshold, top_k)
        ok = np.flatnonzero(np.isfinite(a))
        best = ok[np.lexsort((ok, -a[ok]))][:max_rows]
        picked.append(best)
        counts.append(int(best.size))
    rows = np.unique(np.concatenate(picked)) if picked else np.zeros(0, np.int64)
    return rows.astype(np.int64), counts


def class_grid_sizes(n_rows: int, parent_sizes: Sequence[int], cell_rows: int) -> list[int]:
    """Grid sizes for a class atlas of ``n_rows`` rows: the finest the largest power of two whose
    square has at most ``n_rows / cell_rows`` cells (at most the parent's finest, at least 2), with
    as many levels as the parent's, halving down to 2."""
    finest = 2
    while (2 * finest) ** 2 * cell_rows <= n_rows and 2 * finest <= max(parent_sizes):
        finest *= 2
    sizes = [finest]
    while len(sizes) < len(parent_sizes) and sizes[0] > 2:
        sizes.insert(0, sizes[0] // 2)
    return sizes
