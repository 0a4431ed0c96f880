"""The starting project that ``atlas init`` writes, and the built-in config names (``atlas run demo``).

Files, relative to the project folder::

    pipelines/demo.yaml folder.yaml imagenet-lite0.yaml imagenet-googlenet-mixed4c.yaml
    scripts/slurm/submit.sh collect.sbatch reduce.sbatch grid.sbatch render.sbatch tile.sbatch follow.sbatch
    README.md

The configs and SLURM scripts have one source, the checkout's ``pipelines/`` and
``scripts/slurm/``: ``setup.py`` copies them into ``atlas/templates/`` when a wheel or sdist is
built. An installed atlas reads that copy; a development checkout reads the originals.
``README.md`` is this folder's own.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["TemplatesMissing", "builtin_config", "config_names", "project_files", "template_root", "write_project"]

PACKAGED = Path(__file__).resolve().parent
#: The source checkout this package lives in (when it is one).
CHECKOUT_ROOT = PACKAGED.parents[1]
CONFIGS = Path("pipelines")
SLURM = Path("scripts") / "slurm"
README = "README.md"
_EXECUTABLE = (".sh", ".sbatch")


class TemplatesMissing(FileNotFoundError):
    """Neither the packaged copy nor a checkout holds the templates; the message names the fix."""


def template_root() -> Path:
    """The folder holding ``pipelines/`` and ``scripts/slurm/``: the packaged copy, else the checkout."""
    for root in (PACKAGED, CHECKOUT_ROOT):
        if (root / CONFIGS).is_dir() and (root / SLURM).is_dir():
            return root
    raise TemplatesMissing(
        f"the project templates are missing (looked for pipelines/ and scripts/slurm/ in {PACKAGED} and "
        f"{CHECKOUT_ROOT}): reinstall atlas from a complete wheel, or use a source checkout")


def config_names() -> list[str]:
    """The built-in config names: ``demo``, ``folder``, ``imagenet-lite0``, ..."""
    try:
        root = template_root()
    except TemplatesMissing:
        return []
    return sorted(p.stem for p in (root / CONFIGS).glob("*.yaml"))


def builtin_config(name: str | os.PathLike[str]) -> Path | None:
    """The packaged config for a built-in name (``demo`` or ``demo.yaml``), else None.

    Only bare names qualify: anything with a folder in it is a path.
    """
    text = os.fspath(name)
    if not text or "/" in text or os.sep in text:
        return None
    stem = text.removesuffix(".yaml")
    if stem not in config_names():
        return None
    return template_root() / CONFIGS / f"{stem}.yaml"


def project_files() -> dict[str, Path]:
    """Destination (relative, POSIX) -> source file, for everything ``atlas init`` writes."""
    root = template_root()
    files = {f"{CONFIGS.as_posix()}/{p.name}": p for p in sorted((root / CONFIGS).glob("*.yaml"))}
    files |= {f"{SLURM.as_posix()}/{p.name}": p for p in sorted((root / SLURM).iterdir())
              if p.is_file() and not p.name.startswith(".")}
    files[README] = PACKAGED / README
    return files


def write_project(dest: str | os.PathLike[str], *, force: bool = False) -> list[Path]:
    """Write the starting project into ``dest`` (created if needed); returns the files written.

    Existing files are left alone and reported (FileExistsError, nothing written) unless ``force``.
    """
    dest = Path(dest).expanduser()
    if dest.exists() and not dest.is_dir():
        raise NotADirectoryError(f"{dest} is a file: `atlas init` needs a folder (new or existing) to write into")
    files = project_files()
    if not force:
        clash = [rel for rel in files if (dest / rel).exists()]
        if clash:
            shown = ", ".join(clash[:4]) + (f" and {len(clash) - 4} more" if len(clash) > 4 else "")
            raise FileExistsError(f"{dest} already has {shown}: nothing written; "
                                  "pass --force to overwrite, or choose another folder")
    written = []
    for rel, src in files.items():
        out = dest / rel
        out.parent.mkdir(parents=True, exist_ok=True)
        if out.is_symlink() or (out.exists() and not out.is_file()):
            raise FileExistsError(f"{out} exists and is not a plain file: remove it first")
        out.write_bytes(src.read_bytes())
        if out.suffix in _EXECUTABLE:
            out.chmod(0o755)
        written.append(out)
    return written
