/* The activation atlas viewer: OpenSeadragon over one Deep Zoom pyramid per grid, plus an
 * overlay canvas (class labels, the class heatmap, hover / selection / keyboard outlines), a
 * hover card, a click panel, a class search with a legend, and the view in the URL.
 *
 * Data come from atlas.js (window.ATLAS), cells-<s>.js (window.ATLAS_CELLS_<s>) and
 * heat/<s>/<k>.js (window.ATLAS_HEAT_<s>_<k>), loaded with script tags so the folder also
 * works from file:// (no fetch, no absolute paths).
 *
 * Level of detail. Every grid has its own icons (coarser grids: larger icons) and its own
 * pyramid, all spanning the same square of the world (width 1). The viewer shows one grid at
 * a time: the finest whose cells are on screen at least lod_fraction x its icon size
 * (gridForAtlasPx, the rule of atlas.ops.dzi.grid_for_zoom), so zooming in switches to the next
 * finer grid when its icons reach their native size. Only the shown pyramid is visible (and
 * loads tiles); the one shown before stays underneath until the new one has loaded. The
 * minimap mirrors the pyramids' opacities, so it shows the same picture as the view.
 *
 * URL: #x=<centre x>&y=<centre y>&z=<zoom>&class=<name>&cell=<s>,<row>,<col>; x, y in [0, 1]
 * of the atlas square, z = screen pixels per pixel of the finest grid's icons.
 */
(function () {
  "use strict";

  var LABEL_MIN_PX = 56;       // a cell gets its label when it is at least this wide on screen
  var ZOOM_STEP = Math.SQRT2;  // zoom buttons: one step = the grid change of icons growing by sqrt(2)
  var HOME_BELOW_SWITCH = 0.98;
  var CLICK_DELAY_MS = 320;    // a click opens the panel unless a second click makes it a double-click
  var NARROW = 640;
  // viridis, 9 stops: the heatmap's colour scale
  var SCALE = ["#440154", "#472d7b", "#3b528b", "#2c728e", "#21918c", "#28ae80", "#5ec962", "#addc30", "#fde725"];

  var A = window.ATLAS;
  var state = {
    t0: 0, firstTileMs: null, tilesDrawn: 0, openMs: null, errors: [],
    cells: {}, loading: {}, heat: {}, heatLoading: {}, heatMs: {},
    grid: null, query: null, hover: null, selected: null, cursor: null,
    lastDraw: { s: null, labels: 0, heatCells: 0, heatColours: 0, labelBoxes: [] }
  };
  var api = { state: state, drawHooks: [] };  // drawHooks: functions(ctx, view) drawing on the overlay (atlases.js)
  window.atlasViewer = api;

  var $ = function (id) { return document.getElementById(id); };
  var osdEl = $("osd"), overlay = $("overlay"), card = $("hover-card"), panel = $("panel");
  var panelBody = $("panel-body"), searchInput = $("search-input"), searchList = $("search-list");
  var searchStatus = $("search-status"), legend = $("legend");

  function showMessage(text) {
    var m = $("message");
    m.textContent = text;
    m.hidden = false;
  }

  if (!A) {
    showMessage("atlas.js is missing: this folder is not a finished atlas. Run `atlas tile CONFIG` to build it.");
    return;
  }
  if (!window.OpenSeadragon) {
    showMessage("openseadragon/openseadragon.min.js is missing: rerun `atlas tile CONFIG` (after `make setup`).");
    return;
  }
  if (!A.grids || !A.grids.length) {
    showMessage("This atlas was tiled by an older version of atlas: rerun `atlas tile CONFIG` to rebuild its tiles.");
    return;
  }

  function esc(text) {
    return String(text).replace(/[&<>"']/g, function (c) {
      return { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c];
    });
  }
  function fmtInt(n) { return n === null || n === undefined ? "?" : Number(n).toLocaleString("en-US"); }
  function fmtVal(v) {
    if (v === null || v === undefined) return "";
    var a = Math.abs(v);
    return a >= 100 ? v.toFixed(0) : a >= 0.01 || a === 0 ? v.toPrecision(3) : v.toExponential(1);
  }
  function unitText() { return A.values && A.values.unit === "logit" ? ", logit units" : ""; }
  function plural(n, word) { return fmtInt(n) + " " + word + (n === 1 ? "" : "s"); }
  // A script loaded by a tag (works from file:// too), removed once it ran or failed.
  function loadScript(src, onload, onerror) {
    var el = document.createElement("script");
    el.src = src;
    el.onload = function () { el.remove(); onload(); };
    el.onerror = function () { el.remove(); onerror(); };
    document.head.appendChild(el);
  }
  // shared with atlases.js and located.js
  api.esc = esc;
  api.fmtInt = fmtInt;
  api.fmtVal = fmtVal;
  api.plural = plural;
  api.loadScript = loadScript;

  // ------------------------------------------------------------------ grids
  var grids = A.grids.slice().sort(function (a, b) { return a.size - b.size; });
  var bySize = {};
  grids.forEach(function (g, i) { g.index = i; bySize[g.size] = g; });
  var coarsest = grids[0], finest = grids[grids.length - 1];
  var fraction = A.lod_fraction || 1;
  var classIndex = new Map();  // class id -> position in search_classes (and in class_cells / class_top)
  A.search_classes.forEach(function (k, i) { classIndex.set(k, i); });

  function switchPx(g) { return g === coarsest ? 0 : fraction * g.size * g.icon_size; }
  function gridForAtlasPx(px) {  // the finest grid whose cells are at least fraction x its icon size
    for (var i = grids.length - 1; i > 0; i--) if (px >= switchPx(grids[i])) return grids[i].size;
    return coarsest.size;
  }
  api.gridForAtlasPx = gridForAtlasPx;

  // ------------------------------------------------------------------ header
  var info = [A.model, "layer " + A.layer, fmtInt(A.n_images) + " images"];
  if (A.ok_images !== null && A.ok_images !== undefined && A.ok_images !== A.n_images) info.push(fmtInt(A.ok_images) + " used");
  info.push("grids " + A.sizes.join(" / "));
  $("run-info").textContent = info.join(" \u00b7 ");
  $("run-info").title = info.join(" \u00b7 ");
  document.title = "Activation atlas \u00b7 " + A.model + " " + A.layer;
  if (A.top_kind === "none" || !A.search_classes.length) searchInput.disabled = true;

  // ------------------------------------------------------------------ viewer
  var narrow = window.innerWidth <= NARROW;
  var navPx = narrow ? 84 : 150;
  var viewer = OpenSeadragon({
    element: osdEl,
    prefixUrl: "openseadragon/images/",
    tileSources: grids.map(function (g) {
      return {
        tileSource: {
          Image: {
            xmlns: "http://schemas.microsoft.com/deepzoom/2008",
            Url: g.tiles_url,
            Format: A.dzi.format,
            Overlap: String(A.dzi.overlap),
            TileSize: String(A.dzi.tile_size),
            Size: { Width: String(g.width), Height: String(g.height) }
          }
        },
        x: 0, y: 0, width: 1,
        opacity: g === coarsest ? 1 : 0,
        preload: false
      };
    }),
    drawer: "canvas",            // works from file:// (WebGL refuses file:// images) and without a GPU
    crossOriginPolicy: false,
    showNavigationControl: false, // our own buttons: real <button>s, reachable with Tab
    showNavigator: true,
    navigatorPosition: "BOTTOM_RIGHT",
    navigatorWidth: navPx + "px",
    navigatorHeight: navPx + "px",
    visibilityRatio: 0.5,
    animationTime: 0.5,
    zoomPerClick: 2,             // double-click
    zoomPerScroll: 1.2,
    gestureSettingsMouse: { clickToZoom: false, dblClickToZoom: true },
    gestureSettingsTouch: { clickToZoom: false, dblClickToZoom: true }
  });
  api.viewer = viewer;
  viewer.canvas.appendChild(overlay);  // above the image, below the minimap

  function itemOf(s) { return viewer.world.getItemCount() === grids.length ? bySize[s].item : null; }

  viewer.addHandler("open", function () {
    state.openMs = performance.now();
    grids.forEach(function (g, i) {
      g.item = viewer.world.getItemAt(i);
      g.item.addHandler("fully-loaded-change", function (e) { if (e.fullyLoaded) settleGrids(); });
    });
    applyLimits();
    if (!restoreFromUrl()) viewer.viewport.goHome(true);
    updateGrid();
    scheduleDraw();
  });
  viewer.addHandler("open-failed", function (e) {
    state.errors.push("open-failed: " + (e.message || ""));
    showMessage("Could not open the tiles (" + (e.message || "unknown error") + ").");
  });
  viewer.addHandler("tile-load-failed", function (e) { state.errors.push("tile-load-failed: " + (e.message || "")); });
  viewer.addHandler("tile-drawn", function () {
    if (state.firstTileMs === null) state.firstTileMs = performance.now();
    state.tilesDrawn += 1;
  });
  viewer.addHandler("viewport-change", function () { hideCard(); updateGrid(); scheduleDraw(); });
  ["update-viewport", "animation"].forEach(function (name) { viewer.addHandler(name, function () { updateGrid(); scheduleDraw(); }); });
  viewer.addHandler("resize", function () { applyLimits(); scheduleDraw(); });
  viewer.addHandler("animation-finish", function () { updateStatus(); writeUrl(); });
  window.addEventListener("resize", scheduleDraw);

  // ------------------------------------------------------------------ zoom: atlas width in screen pixels
  function containerWidth() { return viewer.viewport.getContainerSize().x || osdEl.clientWidth || 1; }
  function atlasPx(current) { return viewer.viewport.getZoom(current !== false) * containerWidth(); }
  function zoomForPx(px) { return px / containerWidth(); }
  function homePx() {
    // the coarsest grid, whole when its cells are then at least home_cell_px wide, else zoomed in until they
    // are (at most until the atlas covers the view), and always below the next grid's switch
    var size = viewer.viewport.getContainerSize(), fit = Math.min(size.x, size.y);
    var px = fit, want = (A.home_cell_px || 100) * coarsest.size;
    if (px < want) px = Math.min(want, Math.max(size.x, size.y));
    if (grids.length > 1) px = Math.min(px, switchPx(grids[1]) * HOME_BELOW_SWITCH);
    return px;
  }
  function applyLimits() {
    var vp = viewer.viewport, home = homePx();
    var maxPx = Math.max(home, (A.max_zoom || 2) * finest.width);
    vp.defaultZoomLevel = zoomForPx(home);
    vp.minZoomLevel = zoomForPx(Math.min(home, Math.min(vp.getContainerSize().x, vp.getContainerSize().y)) * 0.5);
    vp.maxZoomLevel = zoomForPx(maxPx);
  }
  function zoomStep(direction) {  // +1 in, -1 out, 0 home
    var vp = viewer.viewport;
    if (direction === 0) vp.goHome(); else vp.zoomBy(direction > 0 ? ZOOM_STEP : 1 / ZOOM_STEP);
    vp.applyConstraints();
  }
  api.atlasPx = atlasPx;
  api.homePx = homePx;
  api.zoomStep = zoomStep;
  $("zoom-in").addEventListener("click", function () { zoomStep(1); });
  $("zoom-out").addEventListener("click", function () { zoomStep(-1); });
  $("zoom-home").addEventListener("click", function () { zoomStep(0); });

  // ------------------------------------------------------------------ which pyramid is visible
  var previousGrid = null;
  function updateGrid() {
    if (viewer.world.getItemCount() !== grids.length) return;
    var s = gridForAtlasPx(atlasPx(true));
    if (s === state.grid) return;
    previousGrid = state.grid;
    state.grid = s;
    var item = itemOf(s);
    viewer.world.setItemIndex(item, viewer.world.getItemCount() - 1);  // on top
    item.setOpacity(1);
    grids.forEach(function (g) { if (g.size !== s && g.size !== previousGrid) g.item.setOpacity(0); });
    if (state.cursor) state.cursor = mapCell(state.cursor, s);
    loadCells(s);
    if (state.query !== null) loadHeat(s, state.query);
    settleGrids();
    updateStatus();
  }
  function settleGrids() {  // the new pyramid has loaded: hide the one kept underneath
    var item = state.grid === null ? null : itemOf(state.grid);
    if (!item || !item.getFullyLoaded()) return;
    grids.forEach(function (g) { if (g.size !== state.grid && g.item.getOpacity() !== 0) g.item.setOpacity(0); });
    previousGrid = null;
  }
  function currentSize() { return state.grid === null ? coarsest.size : state.grid; }
  function mapCell(cell, s) {
    return { s: s, row: Math.min(s - 1, Math.floor((cell.row + 0.5) * s / cell.s)), col: Math.min(s - 1, Math.floor((cell.col + 0.5) * s / cell.s)) };
  }
  api.currentSize = currentSize;

  // ------------------------------------------------------------------ geometry (world: the atlas is the unit square)
  function toWorld(x, y) { return viewer.viewport.pointFromPixel(new OpenSeadragon.Point(x, y), true); }
  function toScreen(x, y) { return viewer.viewport.pixelFromPoint(new OpenSeadragon.Point(x, y), true); }
  function cellRect(s, r, c) {  // on-screen rectangle of cell (r, c) of grid s
    var p0 = toScreen(c / s, r / s), p1 = toScreen((c + 1) / s, (r + 1) / s);
    return { x: p0.x, y: p0.y, w: p1.x - p0.x, h: p1.y - p0.y };
  }
  function viewSize() { return { w: osdEl.clientWidth, h: osdEl.clientHeight }; }
  api.cellRect = cellRect;

  // ------------------------------------------------------------------ cells (lazy, script tags)
  function indexCells(doc) {
    var byKey = new Map();
    doc.cells.forEach(function (cell) { byKey.set(cell.row * doc.size + cell.col, cell); });
    return { doc: doc, size: doc.size, byKey: byKey };
  }
  function loadCells(s) {
    if (state.cells[s]) return Promise.resolve(state.cells[s]);
    if (state.loading[s]) return state.loading[s];
    var p = new Promise(function (resolve, reject) {
      var name = "ATLAS_CELLS_" + s;
      var done = function () {
        var doc = window[name];
        if (!doc) { reject(new Error("cells-" + s + ".js did not define " + name)); return; }
        state.cells[s] = indexCells(doc);
        delete window[name];
        resolve(state.cells[s]);
      };
      if (window[name]) { done(); return; }
      loadScript(bySize[s].cells, done, function () {
        state.errors.push("cannot load " + bySize[s].cells);
        reject(new Error("cannot load " + bySize[s].cells));
      });
    });
    state.loading[s] = p;
    p.then(function () { scheduleDraw(); updateStatus(); }, function () {});
    return p;
  }
  api.loadCells = loadCells;

  function cellAt(x, y) {  // viewer-element pixel -> {s, row, col, cell|null}, or null outside the atlas
    var s = currentSize(), p = toWorld(x, y);
    if (p.x < 0 || p.y < 0 || p.x >= 1 || p.y >= 1) return null;
    var col = Math.floor(p.x * s), row = Math.floor(p.y * s);
    var level = state.cells[s];
    if (!level) { loadCells(s); return { s: s, row: row, col: col, cell: null, loading: true }; }
    return { s: s, row: row, col: col, cell: level.byKey.get(row * s + col) || null };
  }
  api.cellAt = cellAt;

  // ------------------------------------------------------------------ class heatmap (lazy per grid and class)
  function b64bytes(text) {
    var bin = atob(text), out = new Uint8Array(bin.length);
    for (var i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
    return out;
  }
  function decodeHeat(doc) {
    var n = doc.size * doc.size, values = new Uint8Array(n), v = b64bytes(doc.values);
    if (doc.encoding === "sparse") {
      var idx = b64bytes(doc.index), dv = new DataView(idx.buffer);
      for (var i = 0; i < v.length; i++) values[dv.getUint32(4 * i, true)] = v[i];
    } else {
      values.set(v);
    }
    return { size: doc.size, k: doc["class"], max: doc.max, cells: doc.cells, values: values };
  }
  function classCells(s, k) {  // cells of grid s with a positive value for class k
    var i = classIndex.get(k);
    return i === undefined || !A.class_cells[String(s)] ? 0 : A.class_cells[String(s)][i];
  }
  function classTop(s, k) {
    var i = classIndex.get(k);
    return i === undefined || !A.class_top[String(s)] ? 0 : A.class_top[String(s)][i];
  }
  function loadHeat(s, k) {
    var key = s + ":" + k;
    if (state.heat[key]) return Promise.resolve(state.heat[key]);
    if (state.heatLoading[key]) return state.heatLoading[key];
    if (!classCells(s, k)) {  // no file: the class has no cell on this grid
      state.heat[key] = { size: s, k: k, max: 0, cells: 0, values: new Uint8Array(s * s) };
      return Promise.resolve(state.heat[key]);
    }
    var t0 = performance.now();
    var p = new Promise(function (resolve, reject) {
      var name = "ATLAS_HEAT_" + s + "_" + k, src = A.heat_url.replace("{size}", s).replace("{class}", k);
      loadScript(src, function () {
        var doc = window[name];
        if (!doc) { reject(new Error(src + " did not define " + name)); return; }
        delete window[name];
        state.heat[key] = decodeHeat(doc);
        state.heatMs[key] = performance.now() - t0;
        resolve(state.heat[key]);
      }, function () { state.errors.push("cannot load " + src); reject(new Error("cannot load " + src)); });
    });
    state.heatLoading[key] = p;
    p.then(function () { scheduleDraw(); updateStatus(); }, function () {});
    return p;
  }
  api.loadHeat = loadHeat;

  function hexRgb(h) { return [parseInt(h.slice(1, 3), 16), parseInt(h.slice(3, 5), 16), parseInt(h.slice(5, 7), 16)]; }
  var SCALE_RGB = SCALE.map(hexRgb);
  function scaleColour(t) {  // t in [0, 1] -> [r, g, b] on the scale (linear between stops)
    var x = Math.max(0, Math.min(1, t)) * (SCALE_RGB.length - 1), i = Math.min(SCALE_RGB.length - 2, Math.floor(x)), f = x - i;
    var a = SCALE_RGB[i], b = SCALE_RGB[i + 1];
    return [Math.round(a[0] + (b[0] - a[0]) * f), Math.round(a[1] + (b[1] - a[1]) * f), Math.round(a[2] + (b[2] - a[2]) * f)];
  }
  $("legend-bar").style.background = "linear-gradient(to right, " + SCALE.join(", ") + ")";

  // ------------------------------------------------------------------ overlay
  var drawPending = false;
  function scheduleDraw() {
    if (drawPending) return;
    drawPending = true;
    window.requestAnimationFrame(function () { drawPending = false; draw(); });
  }
  api.redraw = draw;

  function fitText(ctx, text, width) {
    if (ctx.measureText(text).width <= width) return text;
    for (var n = text.length - 1; n > 2; n--) {
      var t = text.slice(0, n) + "\u2026";
      if (ctx.measureText(t).width <= width) return t;
    }
    return null;
  }
  function rectOf(el) {  // an element's rectangle relative to the map, or null when hidden
    if (!el || el.hidden || el.offsetParent === null) return null;
    var a = el.getBoundingClientRect(), b = osdEl.getBoundingClientRect();
    return { x0: a.left - b.left, y0: a.top - b.top, x1: a.right - b.left, y1: a.bottom - b.top };
  }
  function meets(r, x0, y0, x1, y1) { return r && x0 < r.x1 && x1 > r.x0 && y0 < r.y1 && y1 > r.y0; }

  // A canvas sized to w x h CSS px at the device's pixel ratio, cleared: its 2-D context in CSS px.
  function fitCanvas(canvas, w, h) {
    var dpr = window.devicePixelRatio || 1;
    if (canvas.width !== Math.round(w * dpr) || canvas.height !== Math.round(h * dpr)) {
      canvas.width = Math.round(w * dpr);
      canvas.height = Math.round(h * dpr);
      canvas.style.width = w + "px";
      canvas.style.height = h + "px";
    }
    var ctx = canvas.getContext("2d");
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, w, h);
    return ctx;
  }
  api.fitCanvas = fitCanvas;

  function draw() {
    var vs = viewSize(), w = vs.w, h = vs.h;
    var ctx = fitCanvas(overlay, w, h);
    var out = { s: null, labels: 0, heatCells: 0, heatColours: 0, labelBoxes: [] };
    state.lastDraw = out;
    if (viewer.world.getItemCount() !== grids.length) return;
    var s = currentSize(), level = state.cells[s], g = bySize[s];
    var px = atlasPx(true);
    $("zoom-info").textContent = "grid " + s + "\u00d7" + s + " (" + (g.index + 1) + " of " + grids.length + ") \u00b7 icons " +
      Math.round(100 * px / s / g.icon_size) + "% of " + g.icon_size + " px";
    out.s = s;
    if (!level) { loadCells(s); return; }
    var origin = toScreen(0, 0), far = toScreen(1, 1);
    var cw = (far.x - origin.x) / s, ch = (far.y - origin.y) / s;
    var c0 = Math.max(0, Math.floor(-origin.x / cw)), c1 = Math.min(s - 1, Math.floor((w - origin.x) / cw));
    var r0 = Math.max(0, Math.floor(-origin.y / ch)), r1 = Math.min(s - 1, Math.floor((h - origin.y) / ch));
    var r, c, cell, x, y;

    if (state.query !== null) {  // heatmap: dim the atlas, colour each cell by the class's value there
      var heat = state.heat[s + ":" + state.query];
      if (!heat) loadHeat(s, state.query);
      ctx.fillStyle = "rgba(18, 20, 30, 0.66)";
      ctx.fillRect(origin.x, origin.y, far.x - origin.x, far.y - origin.y);
      if (heat) {
        var colours = new Set();
        for (r = r0; r <= r1; r++) {
          for (c = c0; c <= c1; c++) {
            var q = heat.values[r * s + c];
            if (!q) continue;
            var t = q / 255, rgb = scaleColour(t);
            x = origin.x + c * cw; y = origin.y + r * ch;
            ctx.clearRect(x, y, cw, ch);
            ctx.fillStyle = "rgba(" + rgb.join(",") + "," + (0.38 + 0.24 * t).toFixed(3) + ")";
            ctx.fillRect(x, y, cw, ch);
            if (cw >= 6) {
              ctx.strokeStyle = "rgb(" + rgb.join(",") + ")";
              ctx.lineWidth = Math.max(1, Math.min(3, cw / 24));
              ctx.strokeRect(x + ctx.lineWidth / 2, y + ctx.lineWidth / 2, cw - ctx.lineWidth, ch - ctx.lineWidth);
            }
            colours.add(q);
            out.heatCells += 1;
          }
        }
        out.heatColours = colours.size;
      }
    }

    var view = { s: s, level: level, origin: origin, cw: cw, ch: ch, r0: r0, r1: r1, c0: c0, c1: c1, query: state.query };
    api.drawHooks.forEach(function (hook) { hook(ctx, view); });

    if (cw >= LABEL_MIN_PX) {  // labels: the top class, inside the visible part of each cell, never under the minimap or panel
      var nav = viewer.navigator ? rectOf(viewer.navigator.element) : null;
      var side = rectOf(panel), leg = rectOf(legend), zoomBox = rectOf(document.querySelector(".zoom-buttons"));
      var badge = rectOf($("zoom-info"));
      var fs = Math.max(10, Math.min(14, Math.floor(cw / 8)));
      var minShare = A.label_min_share || 0;
      ctx.font = "600 " + fs + "px system-ui, -apple-system, 'Segoe UI', Roboto, sans-serif";
      ctx.textBaseline = "middle";
      for (r = r0; r <= r1; r++) {
        for (c = c0; c <= c1; c++) {
          cell = level.byKey.get(r * s + c);
          if (!cell || !cell.top.length) continue;
          if (minShare > 0 && !(cell.share >= minShare)) continue;
          x = origin.x + c * cw; y = origin.y + r * ch;
          var vx0 = Math.max(x, 0), vx1 = Math.min(x + cw, w), vy0 = Math.max(y, 0), vy1 = Math.min(y + ch, h);
          if (vx1 - vx0 < 44 || vy1 - vy0 < fs + 10) continue;
          var text = fitText(ctx, cell.top[0].name, Math.min(vx1 - vx0, cw) - 10);
          if (!text || (text !== cell.top[0].name && vx1 - vx0 < cw - 1)) continue;  // cut by the edge and shortened: none
          var tw = ctx.measureText(text).width, bx = (vx0 + vx1 - tw) / 2 - 4, by = vy1 - fs - 10;
          var bx1 = bx + tw + 8, by1 = by + fs + 6;
          if (meets(nav, bx, by, bx1, by1) || meets(side, bx, by, bx1, by1) || meets(leg, bx, by, bx1, by1) ||
              meets(zoomBox, bx, by, bx1, by1) || meets(badge, bx, by, bx1, by1)) continue;
          ctx.fillStyle = "rgba(255, 255, 255, 0.86)";
          ctx.fillRect(bx, by, tw + 8, fs + 6);
          ctx.fillStyle = "#1d1d24";
          ctx.fillText(text, bx + 4, by + (fs + 6) / 2);
          out.labels += 1;
          out.labelBoxes.push([r, c, bx, by, bx1, by1]);
        }
      }
    }

    [[state.selected, "#2f55d4", 3, null], [state.cursor, "#ff9f1a", 3, [6, 4]], [state.hover, "rgba(20, 20, 30, 0.85)", 2, null]]
      .forEach(function (item) {
        var sel = item[0];
        if (!sel || sel.s !== s) return;
        ctx.save();
        ctx.strokeStyle = item[1];
        ctx.lineWidth = item[2];
        if (item[3]) ctx.setLineDash(item[3]);
        ctx.strokeRect(origin.x + sel.col * cw + 1.5, origin.y + sel.row * ch + 1.5, cw - 3, ch - 3);
        ctx.restore();
      });
  }

  // ------------------------------------------------------------------ hover card
  function classesHtml(cell) {
    if (!cell.top.length) return "<div class='card-sub'>no class attribution stored</div>";
    var vmax = Math.max.apply(null, cell.top.map(function (t) { return Math.abs(t.value || 0); })) || 1;
    return "<ul class='classes'>" + cell.top.map(function (t) {
      var pct = Math.max(2, Math.round(100 * Math.abs(t.value || 0) / vmax));
      return "<li" + (t["class"] === state.query ? " class='match'" : "") + "><span class='name'>" + esc(t.name) +
        "</span><span class='value'>" + esc(fmtVal(t.value)) + "</span><span class='bar'><span style='width:" + pct + "%'></span></span></li>";
    }).join("") + "</ul>";
  }
  function countText(cell) { return "average of " + plural(cell.count, "activation"); }
  function showCard(hit, x, y) {
    var cell = hit.cell;
    var head = A.top_kind === "labels" ? "top labels" : A.top_kind === "none" ? "" : "top classes (attribution" + unitText() + ")";
    card.innerHTML = "<div class='card-title'>" + esc(cell.top.length ? cell.top[0].name : "cell") + "</div>" +
      "<div class='card-sub'>" + countText(cell) + " \u00b7 cell (" + hit.row + ", " + hit.col + ") of the " + hit.s + "\u00d7" + hit.s +
      " grid" + (head ? " \u00b7 " + head : "") + "</div>" + classesHtml(cell);
    card.hidden = false;
    var vs = viewSize(), cw = card.offsetWidth, chh = card.offsetHeight;
    var left = x + 16 + cw > vs.w ? x - 16 - cw : x + 16, top = y + 16 + chh > vs.h ? y - 16 - chh : y + 16;
    card.style.left = Math.max(4, left) + "px";
    card.style.top = Math.max(4, top) + "px";
  }
  function hideCard() {
    if (!card.hidden) card.hidden = true;
    if (state.hover) { state.hover = null; scheduleDraw(); }
  }
  api.hideCard = hideCard;

  function onMove(ev) {
    var rect = osdEl.getBoundingClientRect();
    var x = ev.clientX - rect.left, y = ev.clientY - rect.top;
    if (ev.buttons) { hideCard(); return; }  // dragging
    var hit = cellAt(x, y);
    if (!hit || !hit.cell) { hideCard(); return; }
    var key = hit.s + ":" + hit.row + ":" + hit.col;
    if (!state.hover || state.hover.key !== key) { state.hover = { s: hit.s, row: hit.row, col: hit.col, key: key }; scheduleDraw(); }
    showCard(hit, x, y);
  }
  osdEl.addEventListener("pointermove", onMove, true);
  osdEl.addEventListener("pointerleave", hideCard, true);
  osdEl.addEventListener("pointerdown", function () { card.hidden = true; }, true);

  // ------------------------------------------------------------------ click panel
  function exampleBox(pos, window_) {  // [top, left, bottom, right] of the sampled position's patch, as fractions of its crop
    var shape = A.layer_shape, size = A.input_size;
    if (!pos || !shape || !size || pos[0] < 0) return null;
    function axis(p, n) {  // atlas.ops.canvas.crop_box along one axis: [start, stop) of the crop, in input pixels
      var side = Math.min(size, Math.max(1, Math.round(window_ * size / n))), centre = (p + 0.5) * size / n;
      var start = Math.min(Math.max(Math.floor(centre - side / 2 + 0.5), 0), size - side);
      return [start, start + side];
    }
    function frac(a, span) { return Math.min(Math.max((a - span[0]) / (span[1] - span[0]), 0), 1); }
    var ys = axis(pos[0], shape[1]), xs = axis(pos[1], shape[2]);
    return [frac(pos[0] * size / shape[1], ys), frac(pos[1] * size / shape[2], xs),
            frac((pos[0] + 1) * size / shape[1], ys), frac((pos[1] + 1) * size / shape[2], xs)];
  }
  api.exampleBox = exampleBox;
  function exampleHtml(doc, cell, i) {
    var row = cell.examples[i], box = exampleBox((cell.example_positions || [])[i], doc.example_window || A.example_window || 3);
    var id = (cell.example_labels || [])[i], label = id >= 0 && A.label_names ? A.label_names[id] : null;
    var rf = box ? "<span class='rf' style='top:" + (100 * box[0]).toFixed(2) + "%;left:" + (100 * box[1]).toFixed(2) +
      "%;height:" + (100 * (box[2] - box[0])).toFixed(2) + "%;width:" + (100 * (box[3] - box[1])).toFixed(2) + "%'></span>" : "";
    var caption = label ? esc(label) : "image " + row;
    return "<figure><div class='crop'><img loading='lazy' alt='dataset example: image row " + row + (label ? ", " + esc(label) : "") +
      "' title='image row " + row + "' src='" + esc(doc.example_url.replace("{row}", row)) + "'>" + rf +
      "</div><figcaption title='" + caption + "'>" + caption + "</figcaption></figure>";
  }
  function ordinal(n) {
    var t = n % 100, u = n % 10;
    return n + (t >= 11 && t <= 13 ? "th" : u === 1 ? "st" : u === 2 ? "nd" : u === 3 ? "rd" : "th");
  }
  // The icon measured twice: faithfulness (cosine of its activation to the cell's mean) and
  // distinctness (where its own cell ranks among all cells of the grid by that activation).
  function qualityHtml(cell, doc) {
    var parts = [];
    if (cell.cossim !== null && cell.cossim !== undefined) {
      parts.push("<span id='panel-faithfulness' title='cosine between the icon's activation and the cell's average activation'>faithfulness " +
        esc(fmtVal(cell.cossim)) + "</span>");
    }
    if (cell.rank) {
      parts.push("<span id='panel-distinctness' title='rank of this cell among all " + doc.n_icons +
        " cells of the grid by cosine to the icon's activation (1st: the icon is more this cell's than any other's)'>distinctness: this cell ranks " +
        ordinal(cell.rank) + " of " + doc.n_icons + "</span>");
    }
    return parts.length ? "<p class='quality'>" + parts.join(" \u00b7 ") + "</p>" : "";
  }
  function openPanel(hit) {
    var cell = hit.cell, s = hit.s, doc = state.cells[s].doc;
    var size = doc.icon_size, scale = Math.max(1, Math.ceil(160 / size));
    var html = "<h2>" + esc(cell.top.length ? cell.top[0].name : "Cell") + "</h2>" +
      "<div class='meta'>Cell (" + cell.row + ", " + cell.col + ") of the " + s + "\u00d7" + s + " grid \u00b7 " + countText(cell) +
      (cell.share !== null && cell.share !== undefined && A.top_kind !== "none" ? " \u00b7 top class " + Math.round(100 * cell.share) + "% of the positive attribution" : "") +
      "</div>";
    if (cell.icon) {
      html += "<h3>Icon</h3><canvas class='icon-full' id='panel-icon' role='img' aria-label='feature visualisation of this cell' width='" +
        size * scale + "' height='" + size * scale + "'></canvas>" +
        "<p class='explain'>A picture optimised so the layer's activation of it points along the cell's average activation" +
        "; " + size + "\u00d7" + size + " px.</p>" + qualityHtml(cell, doc);
    }
    html += "<h3>" + (A.top_kind === "labels" ? "Top labels" : "Top classes by attribution") + "</h3>" + classesHtml(cell) +
      "<p class='explain' id='panel-explain'>" + esc(A.values ? A.values.explain : "") + "</p>";
    html += "<h3>Dataset examples</h3><div class='examples' id='panel-examples'>";
    if (cell.examples.length) {
      html += cell.examples.map(function (row, i) { return exampleHtml(doc, cell, i); }).join("");
    } else {
      html += "<div class='none'>" + (doc.examples ? "no examples for this cell" : "examples are cropped for the finest grids only: zoom in") + "</div>";
    }
    html += "</div>";
    if (cell.examples.length) {
      html += "<p class='explain'>The activations nearest the cell's average, each cropped around where it was sampled " +
        "(" + (doc.example_window || A.example_window || 3) + " layer cells wide); outlined: the image patch of that one position of the layer's grid.</p>";
    }
    panelBody.innerHTML = html;
    panel.hidden = false;
    if (cell.icon) drawIcon($("panel-icon"), doc, cell.icon[0], cell.icon[1], scale);
    state.selected = { s: s, row: cell.row, col: cell.col };
    hideCard();
    revealCell(s, cell.row, cell.col);
    scheduleDraw();
    writeUrl();
  }
  function revealCell(s, row, col) {  // pan the cell out from under the panel (a bottom sheet on narrow screens)
    var r = cellRect(s, row, col), p = rectOf(panel), vs = viewSize(), dx = 0, dy = 0;
    if (!p || !meets(p, r.x, r.y, r.x + r.w, r.y + r.h)) return;
    if (p.y0 > 0 && p.y0 > vs.h / 3) dy = Math.max(0, r.y + r.h - p.y0 + 12); else dx = Math.max(0, r.x + r.w - p.x0 + 12);
    if (!dx && !dy) return;
    var a = toWorld(0, 0), b = toWorld(dx, dy);
    viewer.viewport.panBy(new OpenSeadragon.Point(b.x - a.x, b.y - a.y));
  }
  function drawIcon(canvas, doc, sheet, slot, scale) {  // the icon's square of its sheet, pixels enlarged
    var img = new Image(), size = doc.icon_size, cols = doc.icon_sheet_cols;
    img.onload = function () {
      var ctx = canvas.getContext("2d");
      ctx.imageSmoothingEnabled = false;
      ctx.drawImage(img, (slot % cols) * size, Math.floor(slot / cols) * size, size, size, 0, 0, size * scale, size * scale);
      canvas.setAttribute("data-loaded", "1");
    };
    img.onerror = function () { state.errors.push("cannot load icon sheet " + img.src); };
    img.src = doc.icon_url.replace("{sheet}", sheet);
  }
  function closePanel() {
    if (panel.hidden && !state.selected) return;
    panel.hidden = true;
    state.selected = null;
    scheduleDraw();
    writeUrl();
  }
  api.openPanel = openPanel;
  api.closePanel = closePanel;
  $("panel-close").addEventListener("click", closePanel);

  var clickTimer = null;
  viewer.addHandler("canvas-click", function (e) {
    if (!e.quick) return;
    e.preventDefaultAction = true;
    var pos = e.position;
    if (clickTimer) clearTimeout(clickTimer);
    clickTimer = setTimeout(function () {  // a double-click zooms only: its clicks never open the panel
      clickTimer = null;
      var hit = cellAt(pos.x, pos.y);
      if (hit && hit.cell) openPanel(hit); else closePanel();
    }, CLICK_DELAY_MS);
  });
  viewer.addHandler("canvas-double-click", function () {
    if (clickTimer) { clearTimeout(clickTimer); clickTimer = null; }
  });

  // ------------------------------------------------------------------ keyboard cell cursor
  function moveCursor(dr, dc) {
    var s = currentSize();
    if (!state.cursor || state.cursor.s !== s) {
      var centre = viewer.viewport.getCenter(true);
      state.cursor = { s: s, row: Math.min(s - 1, Math.max(0, Math.floor(centre.y * s))), col: Math.min(s - 1, Math.max(0, Math.floor(centre.x * s))) };
    } else {
      state.cursor = { s: s, row: Math.min(s - 1, Math.max(0, state.cursor.row + dr)), col: Math.min(s - 1, Math.max(0, state.cursor.col + dc)) };
    }
    var r = cellRect(s, state.cursor.row, state.cursor.col), vs = viewSize();
    if (r.x < 0 || r.y < 0 || r.x + r.w > vs.w || r.y + r.h > vs.h) {
      viewer.viewport.panTo(new OpenSeadragon.Point((state.cursor.col + 0.5) / s, (state.cursor.row + 0.5) / s));
    } else {
      showCursorCard();
    }
    scheduleDraw();
  }
  function showCursorCard() {
    var cur = state.cursor, level = cur && state.cells[cur.s];
    if (!level) return;
    var cell = level.byKey.get(cur.row * cur.s + cur.col);
    var r = cellRect(cur.s, cur.row, cur.col);
    $("zoom-info").setAttribute("aria-label", cell ? "cell " + cur.row + ", " + cur.col + ": " + (cell.top.length ? cell.top[0].name + ", " : "") +
      countText(cell) : "empty cell " + cur.row + ", " + cur.col);
    if (cell) showCard({ s: cur.s, row: cur.row, col: cur.col, cell: cell }, r.x + r.w - 8, r.y + 8); else card.hidden = true;
  }
  viewer.addHandler("canvas-key", function (e) {
    var key = e.originalEvent.key;
    var moves = { ArrowUp: [-1, 0], ArrowDown: [1, 0], ArrowLeft: [0, -1], ArrowRight: [0, 1] };
    if (moves[key]) {
      e.preventDefaultAction = true;
      e.originalEvent.preventDefault();
      moveCursor(moves[key][0], moves[key][1]);
    } else if (key === "Enter" && state.cursor) {
      e.preventDefaultAction = true;
      var cur = state.cursor, level = state.cells[cur.s], cell = level && level.byKey.get(cur.row * cur.s + cur.col);
      if (cell) openPanel({ s: cur.s, row: cur.row, col: cur.col, cell: cell });
    }
  });
  viewer.addHandler("animation-finish", function () { if (state.cursor && document.activeElement === viewer.canvas) showCursorCard(); });
  api.moveCursor = moveCursor;

  // ------------------------------------------------------------------ class search
  function className(k) { return A.class_names[k] !== undefined ? String(A.class_names[k]) : String(k); }
  function matches(text) {  // every class whose name contains the text, best first
    var q = text.trim().toLowerCase(), s = currentSize();
    if (!q) return [];
    var out = [];
    A.search_classes.forEach(function (k) {
      var name = className(k), low = name.toLowerCase(), at = low.indexOf(q);
      if (at < 0) return;
      out.push({ k: k, name: name, at: at, rank: low === q ? 0 : at === 0 ? 1 : 2, cells: classCells(s, k), top: classTop(s, k) });
    });
    out.sort(function (a, b) { return a.rank - b.rank || b.top - a.top || b.cells - a.cells || (a.name < b.name ? -1 : a.name > b.name ? 1 : 0); });
    return out;
  }
  api.matches = matches;
  var LIST_MAX = 60, activeOption = -1, shown = [];
  function renderList(text) {
    shown = matches(text);
    activeOption = shown.length ? 0 : -1;
    var s = currentSize(), html;
    if (!text.trim()) { closeList(); return; }
    if (!shown.length) {
      html = "<li class='none' role='option' aria-disabled='true'>no class matches \u201c" + esc(text.trim()) + "\u201d</li>";
    } else {
      html = shown.slice(0, LIST_MAX).map(function (m, i) {
        var name = esc(m.name.slice(0, m.at)) + "<mark>" + esc(m.name.slice(m.at, m.at + text.trim().length)) + "</mark>" + esc(m.name.slice(m.at + text.trim().length));
        return "<li role='option' id='search-opt-" + i + "' data-k='" + m.k + "' aria-selected='" + (i === activeOption) + "'><span>" + name +
          "</span><span class='count'>" + (m.top ? "top in " + m.top + " \u00b7 " : "") + plural(m.cells, "cell") + "</span></li>";
      }).join("");
      if (shown.length > LIST_MAX) html += "<li class='none' role='option' aria-disabled='true'>and " + (shown.length - LIST_MAX) + " more: type more of the name</li>";
    }
    searchList.innerHTML = html;
    searchList.hidden = false;
    searchInput.setAttribute("aria-expanded", "true");
    searchList.setAttribute("aria-label", shown.length + " classes match (cells of the " + s + "\u00d7" + s + " grid)");
    setActive(activeOption);
  }
  function setActive(i) {
    activeOption = i;
    Array.prototype.forEach.call(searchList.querySelectorAll("li[data-k]"), function (li, j) { li.setAttribute("aria-selected", String(j === i)); });
    if (i >= 0 && $("search-opt-" + i)) {
      searchInput.setAttribute("aria-activedescendant", "search-opt-" + i);
      $("search-opt-" + i).scrollIntoView({ block: "nearest" });
    } else {
      searchInput.removeAttribute("aria-activedescendant");
    }
  }
  function closeList() {
    searchList.hidden = true;
    searchInput.setAttribute("aria-expanded", "false");
    searchInput.removeAttribute("aria-activedescendant");
  }
  function pick(k) {
    state.query = k;
    searchInput.value = className(k);
    closeList();
    loadHeat(currentSize(), k);
    updateStatus();
    scheduleDraw();
    writeUrl();
    return k;
  }
  function search(text) {  // the best match of the text (as Enter in the box); -1 when none
    var m = matches(text);
    if (!text.trim()) { clearSearch(); return null; }
    if (!m.length) { state.query = null; updateStatus(); searchStatus.textContent = "no class matches \u201c" + text.trim() + "\u201d"; return -1; }
    return pick(m[0].k);
  }
  function clearSearch() {
    state.query = null;
    searchInput.value = "";
    closeList();
    updateStatus();
    scheduleDraw();
    writeUrl();
  }
  api.search = search;
  api.pick = pick;
  api.clearSearch = clearSearch;
  searchInput.addEventListener("input", function () { renderList(searchInput.value); });
  searchInput.addEventListener("focus", function () { if (searchInput.value.trim() && state.query === null) renderList(searchInput.value); });
  searchInput.addEventListener("keydown", function (e) {
    var n = Math.min(shown.length, LIST_MAX);
    if (e.key === "ArrowDown" || e.key === "ArrowUp") {
      if (searchList.hidden) renderList(searchInput.value);
      if (n) setActive((activeOption + (e.key === "ArrowDown" ? 1 : n - 1)) % n);
      e.preventDefault();
    } else if (e.key === "Enter") {
      e.preventDefault();
      if (!searchList.hidden && activeOption >= 0 && shown[activeOption]) pick(shown[activeOption].k); else search(searchInput.value);
    } else if (e.key === "Escape") {
      e.stopPropagation();
      if (!searchList.hidden) closeList(); else clearSearch();
    }
  });
  searchList.addEventListener("mousedown", function (e) {  // mousedown: before the input's blur closes the list
    var li = e.target.closest("li[data-k]");
    if (!li) return;
    e.preventDefault();
    pick(Number(li.getAttribute("data-k")));
  });
  searchInput.addEventListener("blur", function () { setTimeout(closeList, 150); });
  $("search-clear").addEventListener("click", clearSearch);

  function updateStatus() {
    if (state.query === null) { legend.hidden = true; return; }
    var s = currentSize(), k = state.query, heat = state.heat[s + ":" + k], level = state.cells[s];
    legend.hidden = false;
    $("legend-name").textContent = className(k);
    $("legend-unit").textContent = A.values && A.values.unit === "share" ? "share of the cell's images" :
      "mean attribution (logit units)";
    if (!heat || !level) { searchStatus.textContent = "\u2026"; $("legend-max").textContent = ""; return; }
    $("legend-max").textContent = fmtVal(heat.max);
    searchStatus.textContent = heat.cells ? plural(heat.cells, "cell") + " of " + fmtInt(level.byKey.size) + " on the " + s + "\u00d7" + s +
      " grid" + (classTop(s, k) ? " \u00b7 top class in " + classTop(s, k) : "") : "not attributed on the " + s + "\u00d7" + s + " grid";
    $("legend-strongest").disabled = !heat.cells;
  }

  function zoomToStrongest() {  // centre the strongest cell of the shown grid and zoom one grid deeper
    var s = currentSize(), heat = state.heat[s + ":" + state.query];
    if (!heat || !heat.cells) return;
    var best = 0;
    for (var i = 1; i < heat.values.length; i++) if (heat.values[i] > heat.values[best]) best = i;
    var row = Math.floor(best / s), col = best % s, g = bySize[s];
    var next = grids[Math.min(grids.length - 1, g.index + 1)];
    var px = next === g ? Math.max(atlasPx(false), finest.width) : switchPx(next) * 1.2;
    viewer.viewport.zoomTo(Math.min(viewer.viewport.getMaxZoom(), zoomForPx(px)));
    viewer.viewport.panTo(new OpenSeadragon.Point((col + 0.5) / s, (row + 0.5) / s));
    viewer.viewport.applyConstraints();
  }
  api.zoomToStrongest = zoomToStrongest;
  $("legend-strongest").addEventListener("click", zoomToStrongest);

  // ------------------------------------------------------------------ the view in the URL
  function writeUrl() {
    if (!state.openMs || applyingUrl) return;
    var c = viewer.viewport.getCenter(false), z = atlasPx(false) / finest.width;
    var parts = ["x=" + c.x.toFixed(4), "y=" + c.y.toFixed(4), "z=" + z.toPrecision(4)];
    if (state.query !== null) parts.push("class=" + encodeURIComponent(className(state.query)));
    if (state.selected) parts.push("cell=" + [state.selected.s, state.selected.row, state.selected.col].join(","));
    (api.urlParts || []).forEach(function (part) { var p = part(); if (p) parts.push(p); });  // e.g. located.js
    var hash = "#" + parts.join("&");
    if (location.hash !== hash) {
      lastHash = hash;
      history.replaceState(null, "", hash);
    }
  }
  var lastHash = null, applyingUrl = false;
  function parseHash(hash) {
    var out = {};
    hash.replace(/^#/, "").split("&").forEach(function (kv) {
      var i = kv.indexOf("=");
      if (i > 0) out[kv.slice(0, i)] = decodeURIComponent(kv.slice(i + 1).replace(/\+/g, " "));
    });
    return out;
  }
  function restoreFromUrl() {  // true when the URL held a view
    var p = parseHash(location.hash), x = parseFloat(p.x), y = parseFloat(p.y), z = parseFloat(p.z);
    if (!(isFinite(x) && isFinite(y) && isFinite(z) && z > 0)) return false;
    applyingUrl = true;
    var vp = viewer.viewport;
    vp.zoomTo(Math.max(vp.getMinZoom(), Math.min(vp.getMaxZoom(), zoomForPx(z * finest.width))), null, true);
    vp.panTo(new OpenSeadragon.Point(x, y), true);
    updateGrid();
    if (p["class"]) {
      var name = p["class"].toLowerCase(), k = A.search_classes.filter(function (c) { return className(c).toLowerCase() === name; })[0];
      if (k !== undefined) pick(k);
    } else if (state.query !== null) {
      clearSearch();
    }
    var cell = (p.cell || "").split(",").map(Number);
    if (cell.length === 3 && bySize[cell[0]]) {
      loadCells(cell[0]).then(function (level) {
        var found = level.byKey.get(cell[1] * cell[0] + cell[2]);
        if (found) openPanel({ s: cell[0], row: cell[1], col: cell[2], cell: found });
      }, function () {});
    } else if (state.selected) {
      closePanel();
    }
    applyingUrl = false;
    lastHash = location.hash;
    return true;
  }
  window.addEventListener("hashchange", function () { if (location.hash !== lastHash) restoreFromUrl(); });
  api.writeUrl = writeUrl;

  $("share").addEventListener("click", function () {
    writeUrl();
    var btn = $("share"), done = function (ok) {
      btn.textContent = ok ? "Copied" : "Link in the address bar";
      btn.classList.toggle("done", ok);
      setTimeout(function () { btn.textContent = "Link"; btn.classList.remove("done"); }, 1800);
    };
    if (navigator.clipboard && window.isSecureContext) navigator.clipboard.writeText(location.href).then(function () { done(true); }, function () { done(false); });
    else done(false);
  });

  document.addEventListener("keydown", function (e) {
    if (e.key !== "Escape") return;
    if (!panel.hidden) closePanel();
    else if (state.cursor) { state.cursor = null; card.hidden = true; scheduleDraw(); }
    else if (state.query !== null) clearSearch();
  });
})();
