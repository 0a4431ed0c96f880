"""Where the web viewer's files come from, in a source checkout and in an installed package.

The page itself (``index.html``, ``viewer.js``, ``viewer.css``, ``atlases.js``, ...) is ``atlas/viewer``
(package data ``viewer/*``, so a wheel ships every file of it). Its
zoom library, OpenSeadragon (pinned in ``viewer/package-lock.json``), is looked up in order:

1. ``$ATLAS_OPENSEADRAGON``, when set: a folder holding ``openseadragon.min.js`` and ``images/``;
2. the copy shipped in the package, ``atlas/viewer/vendor/openseadragon/build/openseadragon``
   (put there by ``setup.py`` when a wheel or sdist is built; git-ignored);
3. the source checkout's ``viewer/node_modules/openseadragon/build/openseadragon``
   (``npm ci --prefix viewer``, which ``make setup`` runs).

The vendored copy keeps npm's package layout (``package.json`` and ``LICENSE.txt`` next
to ``build/``), so the licence is found the same way for both.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = [
    "CHECKOUT_ROOT",
    "OSD_BUILD",
    "PACKAGED_OPENSEADRAGON",
    "ViewerAssetsMissing",
    "openseadragon_dir",
    "viewer_source_dir",
]

_PACKAGE = Path(__file__).resolve().parent
OSD_BUILD = Path("build") / "openseadragon"
#: OpenSeadragon's npm package folder inside an installed atlas (the build hook's output).
PACKAGED_OPENSEADRAGON = _PACKAGE / "viewer" / "vendor" / "openseadragon"
#: The source checkout this module lives in (when it is one): ``viewer/node_modules`` is under it.
CHECKOUT_ROOT = _PACKAGE.parent
_CHECKOUT_OSD = Path("viewer") / "node_modules" / "openseadragon"


class ViewerAssetsMissing(FileNotFoundError):
    """OpenSeadragon is in none of the places it is looked up; the message names the fixes."""


def viewer_source_dir() -> Path:
    """``atlas/viewer``: the page's own files (index.html, viewer.js, viewer.css, atlases.js, ...)."""
    return _PACKAGE / "viewer"


def _usable(folder: Path) -> bool:
    return (folder / "openseadragon.min.js").is_file() and (folder / "images").is_dir()


def openseadragon_dir() -> Path:
    """OpenSeadragon's build folder (``openseadragon.min.js`` + ``images/``); the first of
    ``$ATLAS_OPENSEADRAGON``, the packaged copy and the checkout's ``viewer/node_modules``.

    Raises :class:`ViewerAssetsMissing` (a FileNotFoundError) naming the places looked at and
    both fixes: ``npm ci --prefix viewer`` in a checkout, or reinstalling the package.
    """
    env = os.environ.get("ATLAS_OPENSEADRAGON")
    candidates = [Path(env).expanduser()] if env else []
    candidates += [PACKAGED_OPENSEADRAGON / OSD_BUILD, CHECKOUT_ROOT / _CHECKOUT_OSD / OSD_BUILD]
    for c in candidates:
        if _usable(c):
            return c
    looked = ", ".join(str(c) for c in candidates)
    env_note = " ($ATLAS_OPENSEADRAGON is set but holds no openseadragon.min.js and images/)" if env else ""
    here = f" in {CHECKOUT_ROOT}" if (CHECKOUT_ROOT / "viewer" / "package.json").is_file() else ""
    raise ViewerAssetsMissing(
        f"the viewer's zoom library OpenSeadragon is not installed (looked in {looked}){env_note}. "
        f"In a source checkout run `make setup` or `npm ci --prefix viewer`{here}; "
        "for an installed atlas reinstall the package from a complete wheel (one built with "
        "`python -m build` in a checkout after `npm ci --prefix viewer`)")
