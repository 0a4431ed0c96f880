"""Held-out images: where they come from, and the ones the network classifies as CLASS_A.

Without ``patch_test.images`` they are demo images the run never collected: indices from
``images.demo_count`` on, at the run's ``images.demo_size``. With it, the first
``patch_test.scan_max`` images of that folder, list or tar source, in its fixed order.
They are classified in batches in order, and the first ``max_images`` whose top-1 class is
CLASS_A are kept: the selection (``selection.json`` in the test's folder) is made once per
test and read back on a resume.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from ...config import Config, ImagesConfig
from ...progress import plural, progress
from ._classify import Classifier
from ._spec import PatchTestSpec

__all__ = ["SCAN_BATCH", "Candidates", "Selection", "candidates", "select", "decode"]

SCAN_BATCH = 32  # images classified together while scanning (at least; patch_test.batch_size when larger)


@dataclass
class Candidates:
    """Held-out images in order: an id each (the demo index, or the position in the source) and its location."""

    ids: list[int]
    locations: list[str]
    what: str


@dataclass
class Selection:
    """The kept images (top-1 CLASS_A), and what the scan saw: images classified, unreadable, top-1 counts."""

    ids: list[int]
    locations: list[str]
    scanned: int
    bad: int
    source: str
    top1: dict[str, int] = field(default_factory=dict)  # class index (as text) -> images, most frequent first

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def candidates(cfg: Config, log: logging.Logger | None = None) -> Candidates:
    """The held-out images ``cfg.patch_test`` names (at most ``scan_max``)."""
    from ...sources import scan_source
    from ...sources._demo import demo_location

    pt = cfg.patch_test
    if pt.images is None or pt.images == "demo":
        first, n = cfg.images.demo_count, pt.scan_max
        return Candidates(list(range(first, first + n)), [demo_location(i, cfg.images.demo_size) for i in range(first, first + n)],
                          f"demo images {first} to {first + n - 1}, which the run did not collect")
    same = cfg.images.path != "demo" and os.path.abspath(os.path.expanduser(pt.images)) == \
        os.path.abspath(os.path.expanduser(cfg.images.path))
    if same and log is not None:
        log.warning("patch_test.images is the run's own images.path: these images are not held out")
    manifest = scan_source(ImagesConfig(path=pt.images, labels="none"))
    n = min(len(manifest), pt.scan_max)
    return Candidates(list(range(n)), manifest.locations[:n], f"the first {n} images of {pt.images}")


def decode(cfg: Config, locations: list[str], size: int) -> tuple[np.ndarray, list[str | None]]:
    """uint8 [n, size, size, 3] (zeros where unreadable) and, per image, None or why it is unreadable."""
    from ...sources import BadInput, load_image

    out = np.zeros((len(locations), size, size, 3), np.uint8)
    why: list[str | None] = []
    for i, loc in enumerate(locations):
        try:
            out[i] = load_image(loc, size=size, max_pixels=cfg.images.max_pixels, min_side=cfg.images.min_side)
            why.append(None)
        except BadInput as e:
            why.append(e.reason)
    return out, why


def _none_found(spec: PatchTestSpec, cand: Candidates, scanned: int, counts: Counter[int]) -> ValueError:
    names = spec.class_names
    common = ", ".join(f"{names[k]!r} (#{k}) {n}" for k, n in counts.most_common(8))
    return ValueError(f"none of the {scanned} held-out images ({cand.what}) is classified as {spec.name_a!r} "
                      f"(#{spec.a}); their most frequent top-1 classes: {common or 'none (no image could be read)'}: "
                      "pass one of them as --from, or other images (--images) or more (patch_test.scan_max)")


def select(cfg: Config, spec: PatchTestSpec, clf: Classifier, log: logging.Logger) -> Selection:
    """Classify the held-out images in order and keep the first ``max_images`` of CLASS_A."""
    pt = cfg.patch_test
    cand = candidates(cfg, log)
    kept: list[int] = []
    counts: Counter[int] = Counter()
    scanned = bad = 0
    bar = progress(total=len(cand.ids), desc="patch-test: select", unit="img")
    step = max(pt.batch_size, SCAN_BATCH)
    for lo in range(0, len(cand.ids), step):
        locs = cand.locations[lo:lo + step]
        imgs, why = decode(cfg, locs, spec.input_size)
        ok = np.array([w is None for w in why])
        scanned += len(locs)
        bad += int((~ok).sum())
        bar.update(len(locs))
        if ok.any():
            top1 = clf.logits(torch.from_numpy(imgs[ok])).argmax(dim=1).numpy()
            counts.update(int(k) for k in top1)
            kept += [lo + int(i) for i, k in zip(np.flatnonzero(ok), top1) if k == spec.a]
        if len(kept) >= pt.max_images:
            break
    bar.close()
    kept = kept[:pt.max_images]
    if not kept:
        raise _none_found(spec, cand, scanned, counts)
    if len(kept) < pt.max_images:
        log.warning("only %d of the %d held-out images scanned are classified as %r (asked for %d): testing those; "
                    "raise patch_test.scan_max or pass more images (--images) for more", len(kept), scanned,
                    spec.name_a, pt.max_images)
    log.info("%s classified as %r among %d scanned (%d unreadable)", plural(len(kept), "image"), spec.name_a, scanned,
             bad)
    return Selection([cand.ids[i] for i in kept], [cand.locations[i] for i in kept], scanned, bad, cand.what,
                     {str(k): n for k, n in counts.most_common()})
