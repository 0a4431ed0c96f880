/* Level of detail, written once: which grid the viewer shows when the atlas is px screen pixels wide.
 *
 * Every grid has its own icons (coarser grids: larger icons) and its own pyramid, all spanning the
 * same square of the world (width 1). atlas.json's table (`grids`: size, icon_size and switch_px,
 * the atlas width at which the grid takes over when zooming in, from atlas.ops.dzi.grid_switch_px)
 * decides: the finest grid whose switch point the zoom has reached, the coarsest below them all.
 * With lod_fraction f, grid s takes over when its cells are f x its icon size on screen (its icons at
 * native size for f = 1), atlas.ops.dzi.grid_for_zoom. An atlas.json written before switch_px existed
 * gets the same points from its sizes and icon sizes.
 */
(function (api) {
  "use strict";

  var SHOW_ABOVE_SWITCH = 1.25;  // pxShowing: this far past a grid's switch point, unless halfway to the next one's

  // The level of detail of atlas A: its grids sorted coarse to fine, each with index (its position).
  api.createLod = function (A) {
    var grids = A.grids.slice().sort(function (a, b) { return a.size - b.size; });
    var bySize = {}, fraction = A.lod_fraction || 1;
    grids.forEach(function (g, i) { g.index = i; bySize[g.size] = g; });
    var coarsest = grids[0], finest = grids[grids.length - 1];

    function switchPx(g) {  // atlas width in screen pixels at which grid g takes over (the coarsest: 0)
      if (typeof g.switch_px === "number") return g.switch_px;
      return g === coarsest ? 0 : fraction * g.size * g.icon_size;
    }
    function gridFor(px) {  // the grid size shown at atlas width px
      for (var i = grids.length - 1; i > 0; i--) if (px >= switchPx(grids[i])) return grids[i].size;
      return coarsest.size;
    }
    function finer(g) { return grids[Math.min(grids.length - 1, g.index + 1)]; }  // g itself when it is the finest
    function pxShowing(g, homePx) {  // an atlas width well inside grid g's range (the coarsest: the home view, homePx)
      if (g === coarsest) return homePx;
      var lo = switchPx(g), next = g === finest ? null : finer(g);
      return next ? Math.min(lo * SHOW_ABOVE_SWITCH, (lo + switchPx(next)) / 2) : lo * SHOW_ABOVE_SWITCH;
    }
    return {
      grids: grids, bySize: bySize, coarsest: coarsest, finest: finest, fraction: fraction,
      switchPx: switchPx, gridFor: gridFor, finer: finer, pxShowing: pxShowing
    };
  };
})(window.atlasViewer);
