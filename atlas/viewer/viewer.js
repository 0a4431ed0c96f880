/* The activation atlas viewer, started: OpenSeadragon over one Deep Zoom pyramid per grid, plus an
 * overlay canvas (class labels, the class heatmap, hover / selection / keyboard outlines, and every
 * extension's overlay), a hover card, a click panel, a class search with a legend, and the view in
 * the URL. The parts are the scripts index.html loads before this one (core.js lists them); this one
 * checks the page's data and starts them in order.
 *
 * Data come from atlas.js (window.ATLAS), cells-<s>.js (window.ATLAS_CELLS_<s>) and
 * heat/<s>/<k>.js (window.ATLAS_HEAT_<s>_<k>), loaded with script tags so the folder also
 * works from file:// (no fetch, no absolute paths).
 */
(function (api) {
  "use strict";

  var PARTS = ["map", "overlay", "panel", "search", "url", "keyboard"];  // started in this order

  function problem(A) {  // why the viewer cannot start, or null
    if (!A) return "atlas.js is missing: this folder is not a finished atlas. Run `atlas tile CONFIG` to build it.";
    if (!window.OpenSeadragon) return "openseadragon/openseadragon.min.js is missing: rerun `atlas tile CONFIG` (after `make setup`).";
    if (!A.grids || !A.grids.length) return "This atlas was tiled by an older version of atlas: rerun `atlas tile CONFIG` to rebuild its tiles.";
    var missing = PARTS.filter(function (name) { return !api.setup[name]; });
    if (missing.length) return "The viewer's " + missing.join(".js, ") + ".js did not load: rerun `atlas tile CONFIG` to copy the viewer again.";
    return null;
  }
  function header(A) {
    var info = [A.model, "layer " + A.layer, api.fmtInt(A.n_images) + " images"];
    if (A.ok_images !== null && A.ok_images !== undefined && A.ok_images !== A.n_images) info.push(api.fmtInt(A.ok_images) + " used");
    info.push("grids " + A.sizes.join(" / "));
    api.$("run-info").textContent = info.join(" \u00b7 ");
    api.$("run-info").title = info.join(" \u00b7 ");
    document.title = "Activation atlas \u00b7 " + A.model + " " + A.layer;
  }

  var A = window.ATLAS, why = api ? problem(A) : "core.js did not load: rerun `atlas tile CONFIG` to copy the viewer again.";
  if (why) {
    var m = document.getElementById("message");
    m.textContent = why;
    m.hidden = false;
    return;
  }
  api.lod = api.createLod(A);
  api.gridForAtlasPx = api.lod.gridFor;
  header(A);
  PARTS.forEach(function (name) { api.setup[name](A); });
})(window.atlasViewer);
