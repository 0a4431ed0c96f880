/* The viewer's core, loaded first: the one namespace every script of the page attaches to,
 * window.atlasViewer, and what they share: text formatting, script loading, colours, the frame
 * scheduler, a small event list and the overlay registry.
 *
 * The page is plain scripts that index.html loads in order (no ES modules: file:// refuses them;
 * index.html's list is also the list `atlas tile` copies):
 *   core.js      this file
 *   lod.js       level of detail: which grid is shown at which zoom, from atlas.json's grids table
 *   data.js      cells-<s>.js and heat/<s>/<k>.js, loaded lazily with script tags
 *   map.js       OpenSeadragon, world <-> screen geometry, zoom, the visible pyramid
 *   overlay.js   the overlay canvas: each frame draws every registered overlay (heatmap, labels, outlines built in)
 *   panel.js     the hover card, the click panel, clicks on cells
 *   search.js    the class search, its legend, zoom to the strongest cells
 *   url.js       the view in the URL, the Link button
 *   keyboard.js  the keyboard cell cursor and Esc
 *   viewer.js    the app: checks the page's data, then starts every part in order
 * then the extensions, each registering one overlay: located.js (located images), units.js (the
 * units behind the cells, `atlas units`), atlases.js (the atlas switcher, two classes compared),
 * layers.js (the layer picker and "where these images go", `model.layers`).
 *
 * Overlays: atlasViewer.registerOverlay(spec) is the one way to add to the map. spec:
 *   name               unique; atlasViewer.overlay(name) returns the registered overlay
 *   order              drawing order, low first: heatmap 10, extensions 40 (default), labels 60, outlines 90
 *   draw(ctx, view)    each frame, on the shared overlay canvas (ctx in CSS pixels, saved and restored
 *                      around the call). view: s (the grid shown), grid (its atlas.json entry), level
 *                      (its cells: {doc, byKey}; null while loading), w / h (the canvas), origin / far
 *                      (screen position of the atlas's corners (0, 0) and (1, 1)), cw / ch (a cell's size),
 *                      r0..r1 / c0..c1 (the visible rows and columns), query (the searched class or null),
 *                      toScreen(x, y) (world -> screen), forEachCell(fn(row, col, x, y)) (the visible cells)
 *   onCell(hit)        a click, or Enter on the keyboard cursor, on a cell: hit = {s, row, col, cell}
 *                      (cell: null when empty); return true to keep the click panel closed
 *   panelSection(hit)  HTML (a string) or a Node added to the click panel of that cell; null: nothing
 *   urlPart()          "key=value" kept in the URL's hash, or null
 *   fromUrl(params)    the hash's parameters ({key: value}), at registration and when the hash changes
 *   onEscape()         Esc while the click panel is closed: return true when it closed something
 */
(function () {
  "use strict";

  var api = window.atlasViewer = {
    state: {
      t0: 0, firstTileMs: null, tilesDrawn: 0, openMs: null, errors: [],
      cells: {}, loading: {}, heat: {}, heatLoading: {}, heatMs: {},
      grid: null, query: null, hover: null, selected: null, cursor: null,
      lastDraw: { s: null, labels: 0, heatCells: 0, heatColours: 0, labelBoxes: [] }
    },
    setup: {},      // each part's start function (map.js: setup.map, ...), called in order by viewer.js
    overlays: []    // the registered overlays, in drawing order
  };

  api.$ = function (id) { return document.getElementById(id); };
  api.showMessage = function (text) {
    var m = api.$("message");
    m.textContent = text;
    m.hidden = false;
  };

  // ------------------------------------------------------------------ text
  var ENTITIES = { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" };
  api.esc = function (text) { return String(text).replace(/[&<>"']/g, function (c) { return ENTITIES[c]; }); };
  api.fmtInt = function (n) { return n === null || n === undefined ? "?" : Number(n).toLocaleString("en-US"); };
  api.fmtVal = function (v) {
    if (v === null || v === undefined) return "";
    var a = Math.abs(v);
    return a >= 100 ? v.toFixed(0) : a >= 0.01 || a === 0 ? v.toPrecision(3) : v.toExponential(1);
  };
  api.plural = function (n, word) { return api.fmtInt(n) + " " + word + (n === 1 ? "" : "s"); };

  // A script loaded by a tag (works from file:// too), removed once it ran or failed.
  api.loadScript = function (src, onload, onerror) {
    var el = document.createElement("script");
    el.src = src;
    el.onload = function () { el.remove(); onload(); };
    el.onerror = function () { el.remove(); onerror(); };
    document.head.appendChild(el);
  };

  // ------------------------------------------------------------------ colours
  // viridis, 9 stops: the heatmap's colour scale
  var VIRIDIS = ["#440154", "#472d7b", "#3b528b", "#2c728e", "#21918c", "#28ae80", "#5ec962", "#addc30", "#fde725"];
  function rgb(hex) { return [parseInt(hex.slice(1, 3), 16), parseInt(hex.slice(3, 5), 16), parseInt(hex.slice(5, 7), 16)]; }
  var VIRIDIS_RGB = VIRIDIS.map(rgb);
  function scale(t) {  // t in [0, 1] -> [r, g, b] on viridis (linear between stops)
    var n = VIRIDIS_RGB.length, x = Math.max(0, Math.min(1, t)) * (n - 1), i = Math.min(n - 2, Math.floor(x)), f = x - i;
    var a = VIRIDIS_RGB[i], b = VIRIDIS_RGB[i + 1];
    return [0, 1, 2].map(function (j) { return Math.round(a[j] + (b[j] - a[j]) * f); });
  }
  api.colour = {
    VIRIDIS: VIRIDIS,
    rgb: rgb,                                   // "#rrggbb" -> [r, g, b]
    scale: scale,
    css: function (c) { return "rgb(" + (typeof c === "string" ? rgb(c) : c).join(",") + ")"; },
    rgba: function (c, alpha) {                 // "#rrggbb" or [r, g, b], alpha in [0, 1] -> "rgba(...)"
      return "rgba(" + (typeof c === "string" ? rgb(c) : c).join(",") + "," + alpha.toFixed(3) + ")";
    }
  };

  // ------------------------------------------------------------------ frame scheduler
  // fn at the next animation frame, once however often it is asked for before then
  api.frame = function (fn) {
    var pending = false;
    return function () {
      if (pending) return;
      pending = true;
      window.requestAnimationFrame(function () { pending = false; fn(); });
    };
  };

  // ------------------------------------------------------------------ events (remembered: a late listener hears the last one)
  var listeners = {}, heard = {};
  api.on = function (name, fn) {
    (listeners[name] = listeners[name] || []).push(fn);
    if (Object.prototype.hasOwnProperty.call(heard, name)) fn(heard[name]);
  };
  api.emit = function (name, value) {
    heard[name] = value;
    (listeners[name] || []).forEach(function (fn) { fn(value); });
  };

  // ------------------------------------------------------------------ overlays
  var HOOKS = ["draw", "onCell", "panelSection", "urlPart", "fromUrl", "onEscape"];
  var DEFAULT_ORDER = 40;
  function overlayProblem(spec) {
    if (!spec || typeof spec.name !== "string" || !spec.name) return "give it a name: registerOverlay({name: 'mine', draw: function (ctx, view) {}})";
    if (api.overlay(spec.name)) return "an overlay named '" + spec.name + "' is registered already: give this one another name";
    var unknown = Object.keys(spec).filter(function (k) { return k !== "name" && k !== "order" && HOOKS.indexOf(k) < 0; });
    if (unknown.length) return "overlay '" + spec.name + "' has unknown keys " + unknown.join(", ") + " (known: name, order, " + HOOKS.join(", ") + ")";
    var bad = HOOKS.filter(function (k) { return spec[k] !== undefined && typeof spec[k] !== "function"; });
    if (bad.length) return "overlay '" + spec.name + "': " + bad.join(", ") + " must be functions";
    if (spec.order !== undefined && typeof spec.order !== "number") return "overlay '" + spec.name + "': order must be a number";
    return null;
  }
  api.overlay = function (name) { return api.overlays.filter(function (o) { return o.name === name; })[0] || null; };
  api.registerOverlay = function (spec) {
    var problem = overlayProblem(spec);
    if (problem) throw new Error("atlasViewer.registerOverlay: " + problem);
    var o = { name: spec.name, order: spec.order === undefined ? DEFAULT_ORDER : spec.order };
    HOOKS.forEach(function (k) { if (spec[k]) o[k] = spec[k]; });
    api.overlays.push(o);
    api.overlays.sort(function (a, b) { return a.order - b.order; });  // stable: equal orders keep registration order
    // the hash the page was opened with: the map may have rewritten it before a later script registered
    if (o.fromUrl && api.urlParams) o.fromUrl(api.urlParams(api.openedHash === undefined ? location.hash : api.openedHash));
    if (api.scheduleDraw) api.scheduleDraw();
    return o;
  };
  // Every overlay's answer to hook(...args), in drawing order: [{overlay, value}] (overlays without the hook skipped)
  api.callOverlays = function (hook, args) {
    return api.overlays.filter(function (o) { return o[hook]; }).map(function (o) {
      return { overlay: o, value: o[hook].apply(o, args || []) };
    });
  };
})();
