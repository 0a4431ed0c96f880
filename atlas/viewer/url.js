/* The view in the URL's hash, so a link shows what its sender saw:
 *   #x=<centre x>&y=<centre y>&z=<zoom>&class=<name>&cell=<s>,<row>,<col>
 * x, y in [0, 1] of the atlas square, z = screen pixels per pixel of the finest grid's icons; then
 * every overlay's urlPart() (e.g. located=<unit>), whose fromUrl(params) gets the hash back.
 * The Link button copies the address.
 */
(function (api) {
  "use strict";

  var state = api.state, lastHash = null, applying = false;

  function parseHash(hash) {  // "#a=1&b=x" -> {a: "1", b: "x"}
    var out = {};
    hash.replace(/^#/, "").split("&").forEach(function (kv) {
      var i = kv.indexOf("=");
      if (i > 0) out[kv.slice(0, i)] = decodeURIComponent(kv.slice(i + 1).replace(/\+/g, " "));
    });
    return out;
  }
  api.urlParams = function (hash) { return parseHash(hash === undefined ? location.hash : hash); };
  // The hash the page was opened with: once the map opens, writeUrl rewrites it with what the parts
  // registered by then keep, so a part whose script runs later reads its own keys here.
  api.openedHash = location.hash;

  function writeUrl() {
    if (!state.openMs || applying) return;
    var c = api.viewer.viewport.getCenter(false), z = api.atlasPx(false) / api.lod.finest.width;
    var parts = ["x=" + c.x.toFixed(4), "y=" + c.y.toFixed(4), "z=" + z.toPrecision(4)];
    if (state.query !== null) parts.push("class=" + encodeURIComponent(api.className(state.query)));
    if (state.selected) parts.push("cell=" + [state.selected.s, state.selected.row, state.selected.col].join(","));
    api.callOverlays("urlPart").forEach(function (r) { if (r.value) parts.push(r.value); });
    var hash = "#" + parts.join("&");
    if (location.hash !== hash) {
      lastHash = hash;
      history.replaceState(null, "", hash);
    }
  }
  api.writeUrl = writeUrl;

  // ------------------------------------------------------------------ restoring
  function restoreClass(name) {
    if (name) {
      var low = name.toLowerCase(), k = window.ATLAS.search_classes.filter(function (c) { return api.className(c).toLowerCase() === low; })[0];
      if (k !== undefined) api.pick(k);
    } else if (state.query !== null) {
      api.clearSearch();
    }
  }
  function restoreCell(text) {
    var cell = (text || "").split(",").map(Number);
    if (cell.length === 3 && api.lod.bySize[cell[0]]) {
      api.loadCells(cell[0]).then(function (level) {
        var found = level.byKey.get(cell[1] * cell[0] + cell[2]);
        if (found) api.openPanel({ s: cell[0], row: cell[1], col: cell[2], cell: found });
      }, function () {});
    } else if (state.selected) {
      api.closePanel();
    }
  }
  function restoreFromUrl() {  // true when the URL held a view
    var p = api.urlParams(), x = parseFloat(p.x), y = parseFloat(p.y), z = parseFloat(p.z);
    if (!(isFinite(x) && isFinite(y) && isFinite(z) && z > 0)) return false;
    applying = true;
    var vp = api.viewer.viewport;
    vp.zoomTo(Math.max(vp.getMinZoom(), Math.min(vp.getMaxZoom(), api.zoomForPx(z * api.lod.finest.width))), null, true);
    vp.panTo(new OpenSeadragon.Point(x, y), true);
    api.updateGrid();
    restoreClass(p["class"]);
    restoreCell(p.cell);
    applying = false;
    lastHash = location.hash;
    return true;
  }
  api.restoreFromUrl = restoreFromUrl;

  function share() {
    writeUrl();
    var btn = api.$("share"), done = function (ok) {
      btn.textContent = ok ? "Copied" : "Link in the address bar";
      btn.classList.toggle("done", ok);
      setTimeout(function () { btn.textContent = "Link"; btn.classList.remove("done"); }, 1800);
    };
    if (navigator.clipboard && window.isSecureContext) navigator.clipboard.writeText(location.href).then(function () { done(true); }, function () { done(false); });
    else done(false);
  }

  api.setup.url = function () {
    window.addEventListener("hashchange", function () {
      if (location.hash === lastHash) return;
      restoreFromUrl();
      var params = api.urlParams();
      api.callOverlays("fromUrl", [params]);
    });
    api.$("share").addEventListener("click", share);
  };
})(window.atlasViewer);
