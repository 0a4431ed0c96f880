"""Analysis ``patch-test``: the Distill article's human-adversarial patches, measured.

``atlas patch-test CONFIG --from CLASS_A --to CLASS_B --patch PATCH`` pastes a patch (an atlas
icon ``cell:<grid>:<row>,<col>``, a dataset example ``example:<grid>:<row>,<col>[:k]``, or any
image file) at each of ``patch_test.sizes`` and ``patch_test.positions`` onto held-out images
the network classifies as CLASS_A, and counts how often the top-1 prediction becomes CLASS_B,
against a uniform-noise patch of the same size at the same places.

Several tests live in one run, each in its own folder ``RUN/patch-test/<slug>/``::

    test.json       what was tested (classes, patch, images, sizes, positions) and the test's key
    config.yaml     the config it ran with but ``run_dir`` (the run holding the folder: the folder's
                    bytes do not depend on where the run is), plus provenance: `atlas patch-test
                    <it> --set run_dir=RUN` redoes nothing
    patch.png       the patch as pasted (before resizing)
    selection.json  the held-out images kept (top-1 CLASS_A), images scanned, their top-1 counts
    units/*.npz     per unit: every trial's top-1, P(A), P(B), rank of B (``_trials``)
    results.json    the rows, the headline and the test's description (written last)
    table.md, table.tsv, examples.png

How several tests share one stage of the contract: the stage's *settings* are only a format
number, and each test is a *scope* (``{"test": slug, "key": key, "examples": n}``). Its units are
``<slug>.<key[:8]>.batch-<i>``, the kept images in batches of ``batch_size`` (``open`` finds
them, or reads them back from ``selection.json``, before the units are listed). A second test
therefore keeps the stage's attempt (same fingerprint), adds its own units next to the first
test's markers and finishes with its own scope; nothing of the first is touched. The ``final`` marker records the last test finished: running a test
whose scope it holds does nothing; running an earlier one again finds all its units done and
only re-checks its results (``finish`` skips a folder whose ``results.json`` holds the scope).
The key hashes everything that decides the unit data (``_spec``): another patch, classes,
sizes, positions, images or seed under the same slug redoes that test (``open`` removes its folder
under a per-test lock; the stage's ``forget`` names its done units, whose markers the runner
clears), and a deleted test folder is redone on the next run (``refresh`` asks the runner to).
Redoing collect (the network) redoes the stage, and so every test.
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import logging
import math
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ...config import Config, config_to_dict, provenance
from ...formats import CollectOutput, PatchTestOutput
from ...ops.patches import place_count
from ...progress import plural, progress
from ...store import RunDir, StoreError, atomic_save_npz, atomic_write_bytes, atomic_write_text
from .._protocol import Job, Resources, StageBase
from ._classify import Classifier
from ._heldout import Selection, decode, select
from ._spec import FORMAT, NAME, PatchSpecError, PatchTestSpec, parse_patch, resolve
from ._trials import place_offsets, run_batch

__all__ = ["STAGE", "PatchTestStage", "PatchSpecError", "PatchTestSpec", "resolve", "parse_patch", "results_of",
           "folder_of", "unit_names"]


@dataclass
class _Context:
    cfg: Config
    run: RunDir
    log: logging.Logger
    spec: PatchTestSpec
    folder: Path
    clf: Classifier | None = None
    selection: Selection | None = None
    redo: bool = False  # the test's folder was gone or another test's: its done units run again


def folder_of(run: RunDir, spec: PatchTestSpec) -> Path:
    """``RUN/patch-test/<slug>``."""
    return PatchTestOutput(run).folder(spec.slug)


def unit_names(cfg: Config, spec: PatchTestSpec, images: int) -> list[str]:
    """The test's units: its ``images`` kept images in batches of ``patch_test.batch_size``."""
    n = math.ceil(images / cfg.patch_test.batch_size)
    return [f"{spec.unit_prefix}batch-{i:04d}" for i in range(n)]


def _slug_of(unit: str) -> str:
    return unit.rsplit(".", 2)[0] if unit.count(".") >= 2 else ""


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return None


def _test_lock(run: RunDir, slug: str) -> contextlib.AbstractContextManager[None]:
    """Blocking lock on one test (its folder and markers); separate from the runner's stage lock,
    which ``finish`` holds while it takes this one."""
    return run.stage_lock(NAME, f"test-{slug}")


# --------------------------------------------------------------------------- set-up


def _forget_old(ctx: _Context) -> None:
    """A test whose folder is gone, or holds another key (other settings under this name): remove
    its folder and set ``ctx.redo``, so that :meth:`PatchTestStage.forget` names its done units
    (the runner clears their markers) and the test is redone."""
    about = _read_json(ctx.folder / "test.json")
    if about is not None and about.get("key") == ctx.spec.key:
        return
    if about is not None:
        ctx.log.warning("%s: test %s was run with other settings (key %s, now %s): redoing it", NAME, ctx.spec.slug,
                        about.get("key"), ctx.spec.key)
    ctx.redo = True
    shutil.rmtree(ctx.folder, ignore_errors=True)


def _open(job: Job) -> _Context:
    """Resolve the test, forget an old one under its name, and find (or read back) its images, so
    that a test with no image of CLASS_A fails before anything is written."""
    from ...models import pin_threads

    pin_threads(job.cfg.patch_test.threads)
    spec = resolve(job.cfg, job.run)
    ctx = _Context(job.cfg, job.run, job.log, spec, folder_of(job.run, spec))
    with _test_lock(job.run, spec.slug):
        _forget_old(ctx)
        saved = _read_json(ctx.folder / "selection.json")
    ctx.selection = Selection(**saved) if saved is not None else select(ctx.cfg, spec, _classifier(ctx), ctx.log)
    return ctx


def _classifier(ctx: _Context) -> Classifier:
    from ...models import load_network, resolve_device

    if ctx.clf is None:
        net = load_network(ctx.cfg.model)
        col = CollectOutput.open(ctx.run)
        theirs = (col.model, col.input_size, col.weights_sha256)
        mine = (ctx.cfg.model.name, net.input_size, net.weights_sha256)
        if theirs[:2] != mine[:2] or (theirs[2] and mine[2] and theirs[2] != mine[2]):
            raise StoreError(f"this config's model ({mine[0]}, input {mine[1]} px, weights {str(mine[2])[:12]}) is not the "
                             f"one {ctx.run.root} was collected with ({theirs[0]}, input {theirs[1]} px, weights "
                             f"{str(theirs[2])[:12]}): run `atlas patch-test {ctx.run.root / 'config.yaml'} ...`")
        device = resolve_device(ctx.cfg.model.device)
        ctx.clf = Classifier(net, device, channels_last=ctx.cfg.collect.channels_last, fold_bn=ctx.cfg.collect.fold_bn)
    return ctx.clf


def _test_config(cfg: Config) -> str:
    """The test's ``config.yaml`` (before its provenance): ``cfg`` without ``run_dir``, which is the
    run holding the folder wherever it is (a copied or moved run keeps the same bytes)."""
    import yaml

    data = config_to_dict(cfg)
    data.pop("run_dir", None)
    return ("# the config of this patch test, but its run directory (the run holding this folder):\n"
            "# `atlas patch-test <this file> --set run_dir=RUN` finds the finished test and redoes nothing\n"
            + yaml.safe_dump(data, sort_keys=False))


def _write_folder(ctx: _Context) -> None:
    """The test's description files, ``test.json`` last (it marks the folder as this test's)."""
    import yaml
    from PIL import Image

    folder, spec = ctx.folder, ctx.spec
    if (_read_json(folder / "test.json") or {}).get("key") == spec.key:
        return
    folder.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(spec.patch)).save(buf, format="PNG")
    atomic_write_bytes(folder / "patch.png", buf.getvalue())
    prov = provenance({"patch_test": {"key": spec.key, "slug": spec.slug, "patch_sha256": spec.settings["patch_sha256"]}})
    atomic_write_text(folder / "config.yaml", _test_config(ctx.cfg) + "\n" + yaml.safe_dump({"provenance": prov}, sort_keys=False))
    atomic_write_text(folder / "test.json", json.dumps({"slug": spec.slug, "key": spec.key, **spec.about,
                                                        "settings": spec.settings}, indent=2))


def _save_selection(ctx: _Context) -> Selection:
    """The kept images (found by ``open``), written to ``selection.json`` once."""
    assert ctx.selection is not None
    path = ctx.folder / "selection.json"
    if not path.is_file():
        atomic_write_text(path, json.dumps(ctx.selection.as_dict(), indent=1))
    return ctx.selection


# --------------------------------------------------------------------------- units


def _unit_path(ctx: _Context, unit: str) -> Path:
    return ctx.folder / "units" / f"{unit}.npz"


def _run_units(ctx: _Context, units: list[str]) -> Iterator[tuple[str, dict[str, Any]]]:
    cfg, spec = ctx.cfg, ctx.spec
    with _test_lock(ctx.run, spec.slug):
        _write_folder(ctx)
        sel = _save_selection(ctx)
    bs = cfg.patch_test.batch_size
    batches = {u: int(u.rsplit("-", 1)[1]) for u in units}
    n_img = sum(len(sel.ids[i * bs:(i + 1) * bs]) for i in batches.values())
    per_image = len(cfg.patch_test.sizes) * sum(place_count(p) for p in cfg.patch_test.positions)
    ctx.log.info("%s: %s of %r to test in %s, %s each (patch and noise), into %s", NAME, plural(n_img, "image"),
                 spec.name_a, plural(len(units), "unit"), plural(per_image, "trial"), ctx.folder)
    bar = progress(total=n_img * per_image, desc=NAME, unit="trial")
    t0, done = time.time(), 0
    for unit, i in batches.items():
        ids, locs = sel.ids[i * bs:(i + 1) * bs], sel.locations[i * bs:(i + 1) * bs]
        images, why = decode(cfg, locs, spec.input_size)
        bad = [(loc, w) for loc, w in zip(locs, why) if w is not None]
        if bad:
            raise StoreError(f"held-out image {bad[0][0]} can no longer be read ({bad[0][1]}): delete {ctx.folder} "
                             "to redo the test's selection")
        arrays = run_batch(cfg, spec, _classifier(ctx), images, ids, on_trial=functools.partial(bar.update, len(ids)))
        atomic_save_npz(_unit_path(ctx, unit), **arrays)
        done += len(ids)
        rate = done / max(time.time() - t0, 1e-9)
        ctx.log.info("%s done: %s (%.2f img/s)", unit, plural(len(ids), "image"), rate)
        yield unit, {"images": len(ids)}
    bar.close()


# --------------------------------------------------------------------------- finish


def _load_units(ctx: _Context) -> dict[str, np.ndarray]:
    parts: list[dict[str, np.ndarray]] = []
    assert ctx.selection is not None
    for unit in unit_names(ctx.cfg, ctx.spec, len(ctx.selection.ids)):
        path = _unit_path(ctx, unit)
        if not path.is_file():
            raise StoreError(f"{path} is missing: delete {ctx.folder} and rerun the test to redo it")
        with np.load(path) as z:
            parts.append({k: z[k] for k in z.files})
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def _finish(ctx: _Context) -> dict[str, Any]:
    from ._report import aggregate, examples_figure, headline, headline_row, pick_examples, table_markdown, table_tsv

    cfg, spec, folder = ctx.cfg, ctx.spec, ctx.folder
    scope = spec.scope(cfg)
    with _test_lock(ctx.run, spec.slug):
        old = PatchTestOutput(ctx.run).results(folder)
        if old is not None and old.get("scope") == scope:
            ctx.log.info("%s (results already in %s)", old["headline"], folder)
            return {"test": spec.slug, "headline": old["headline"]}
        sel = ctx.selection
        assert sel is not None
        data = _load_units(ctx)
        rows = aggregate(cfg, spec, data)
        head = headline(spec, rows)
        best = headline_row(rows)
        atomic_write_text(folder / "table.md", table_markdown(spec, rows))
        atomic_write_text(folder / "table.tsv", table_tsv(rows))
        figure = folder / "examples.png"
        if cfg.patch_test.examples:
            si = list(cfg.patch_test.sizes).index(best["size"])
            j = place_offsets(list(cfg.patch_test.positions))[list(cfg.patch_test.positions).index(best["position"])][0]
            shown = pick_examples(spec, data, si, j, cfg.patch_test.examples)
            images, _ = decode(cfg, [sel.locations[i] for i in shown], spec.input_size)
            buf = io.BytesIO()
            examples_figure(cfg, spec, data, images, shown, best, head).save(buf, format="PNG")
            atomic_write_bytes(figure, buf.getvalue())
        else:
            figure.unlink(missing_ok=True)
        names = spec.class_names
        orig = {"top1_is_from": round(float((data["orig_top1"] == spec.a).mean()), 6),
                "mean_prob_from": round(float(data["orig_prob_a"].mean()), 6),
                "mean_prob_to": round(float(data["orig_prob_b"].mean()), 6)}
        top1 = {names[int(k)]: n for k, n in list(sel.top1.items())[:10]}
        results = {"test": spec.slug, "key": spec.key, "scope": scope, "headline": head, **spec.about,
                   "images": {"source": sel.source, "scanned": sel.scanned, "unreadable": sel.bad,
                              "tested": int(data["ids"].size), "scanned_top1": top1},
                   "original": orig, "model": {"name": cfg.model.name, "input_size": spec.input_size},
                   "best": {"size": best["size"], "position": best["position"]}, "rows": rows,
                   "files": ["table.md", "table.tsv", *(["examples.png"] if cfg.patch_test.examples else [])]}
        PatchTestOutput(ctx.run).write_results(folder, results)
    ctx.log.info("%s", head)
    ctx.log.info("results: %s (table.md, examples.png)", folder)
    return {"test": spec.slug, "headline": head}


def results_of(cfg: Config) -> dict[str, Any]:
    """The finished test ``cfg.patch_test`` names: ``results.json`` plus ``folder`` and ``table`` (Markdown)."""
    run = RunDir(cfg.run_dir)
    spec = resolve(cfg, run)
    folder = folder_of(run, spec)
    res = PatchTestOutput(run).results(folder)
    if res is None or res.get("scope") != spec.scope(cfg):
        raise StoreError(f"the patch test {spec.slug} is not finished in {run.root}: run `atlas patch-test` first")
    return {**res, "folder": str(folder), "table": (folder / "table.md").read_text()}


class PatchTestStage(StageBase[_Context]):
    """Analysis: human-adversarial patches on held-out images -> ``RUN/patch-test/<slug>/``."""

    name = NAME
    inputs = ("collect",)
    execution = "single"
    wants_gpu = True
    on_change = "redo"
    lease_window = 64  # units leased and run by one call (one setup, one progress bar)
    resources = Resources(tasks=1, time="02:00:00", cpus=8, mem="16G", gpus=1)

    def settings(self, cfg: Config) -> dict[str, Any]:
        """Only the format: each test is a scope of its own (see the module docstring)."""
        return {"format": FORMAT}

    def scope(self, cfg: Config, done: frozenset[str]) -> dict[str, Any]:
        """The test the config asks for: its folder name, its key and the examples shown."""
        return resolve(cfg, RunDir(cfg.run_dir)).scope(cfg)

    def open(self, job: Job) -> _Context:
        return _open(job)

    def forget(self, ctx: _Context, done: frozenset[str]) -> set[str]:
        """The done units of a test whose folder ``open`` found gone or another test's."""
        return {u for u in done if _slug_of(u) == ctx.spec.slug} if ctx.redo else set()

    def units(self, ctx: _Context) -> list[str]:
        assert ctx.selection is not None
        return unit_names(ctx.cfg, ctx.spec, len(ctx.selection.ids))

    def run_units(self, ctx: _Context, units: list[str]) -> Iterator[tuple[str, dict[str, Any]]]:
        yield from _run_units(ctx, units)

    def finish(self, ctx: _Context) -> dict[str, Any]:
        return _finish(ctx)

    def refresh(self, job: Job) -> bool:
        """The test is finished by its markers: redo it (True) when its results were deleted since."""
        spec = resolve(job.cfg, job.run)
        folder = folder_of(job.run, spec)
        res = PatchTestOutput(job.run).results(folder)
        if res is not None and res.get("scope") == spec.scope(job.cfg):
            job.log.info("%s", res["headline"])
            return False
        job.log.warning("%s: the results of test %s are missing from %s: redoing it", NAME, spec.slug, folder)
        return True

    def provenance(self, ctx: _Context) -> dict[str, Any]:
        return {}

    def detail(self, run: RunDir) -> dict[str, Any]:
        """The tests with results, and the headline of the latest."""
        out = PatchTestOutput(run)
        done = out.finished()
        latest = out.results(done[-1]) if done else None
        return {"tests": len(done), "latest": latest["headline"] if latest else None}


STAGE = PatchTestStage()
