/* The activation atlas viewer: OpenSeadragon over the Deep Zoom tiles, plus an overlay
 * canvas (class labels, search heatmap, hover outline), a hover card and a click panel.
 *
 * Data come from atlas.js (window.ATLAS) and cells-<s>.js (window.ATLAS_CELLS_<s>), loaded
 * with script tags so the folder also works from file:// (no fetch, no absolute paths).
 * The grid shown at a zoom follows the tile stage's level-of-detail table ATLAS.lod
 * (DZI level -> grid size), so hover, labels and heatmap refer to the cells on screen.
 */
(function () {
  "use strict";

  var LABEL_MIN_PX = 56;   // draw a cell's top class when the cell is at least this wide on screen
  var A = window.ATLAS;
  var state = {
    t0: 0, firstTileMs: null, tilesDrawn: 0, openMs: null, errors: [],
    cells: {}, loading: {}, query: null, hover: null, selected: null
  };
  var api = { state: state };
  window.atlasViewer = api;

  var $ = function (id) { return document.getElementById(id); };
  var osdEl = $("osd"), overlay = $("overlay"), card = $("hover-card"), panel = $("panel");
  var panelBody = $("panel-body"), searchInput = $("search-input"), searchStatus = $("search-status");

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

  function esc(text) {
    return String(text).replace(/[&<>"']/g, function (c) {
      return { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c];
    });
  }
  function fmtInt(n) { return n === null || n === undefined ? "?" : Number(n).toLocaleString("en-US"); }
  function fmtVal(v) { return v === null || v === undefined ? "" : (Math.abs(v) >= 100 ? v.toFixed(0) : v.toPrecision(3)); }

  // ------------------------------------------------------------------ header
  var info = [A.model, "layer " + A.layer, fmtInt(A.n_images) + " images"];
  if (A.ok_images !== null && A.ok_images !== undefined && A.ok_images !== A.n_images) info.push(fmtInt(A.ok_images) + " used");
  info.push("grids " + A.sizes.join(" / "));
  $("run-info").textContent = info.join(" \u00b7 ");
  document.title = "Activation atlas \u00b7 " + A.model + " " + A.layer;
  var list = $("class-list");
  A.search_classes.forEach(function (k) {
    var opt = document.createElement("option");
    opt.value = A.class_names[k] !== undefined ? A.class_names[k] : String(k);
    list.appendChild(opt);
  });
  if (A.top_kind === "none") searchInput.disabled = true;

  // ------------------------------------------------------------------ viewer
  var viewer = OpenSeadragon({
    element: osdEl,
    prefixUrl: "openseadragon/images/",
    tileSources: {
      Image: {
        xmlns: "http://schemas.microsoft.com/deepzoom/2008",
        Url: A.dzi.tiles_url,
        Format: A.dzi.format,
        Overlap: String(A.dzi.overlap),
        TileSize: String(A.dzi.tile_size),
        Size: { Width: String(A.width), Height: String(A.height) }
      }
    },
    drawer: "canvas",            // works from file:// (WebGL refuses file:// images) and without a GPU
    crossOriginPolicy: false,
    showNavigator: true,
    navigatorPosition: "BOTTOM_RIGHT",
    maxZoomPixelRatio: 4,
    visibilityRatio: 0.5,
    animationTime: 0.6,
    gestureSettingsMouse: { clickToZoom: false, dblClickToZoom: true },
    gestureSettingsTouch: { clickToZoom: false, dblClickToZoom: true }
  });
  api.viewer = viewer;
  viewer.canvas.appendChild(overlay);  // above the image, below OpenSeadragon's buttons and navigator

  viewer.addHandler("open", function () { state.openMs = performance.now(); scheduleDraw(); });
  viewer.addHandler("open-failed", function (e) {
    state.errors.push("open-failed: " + (e.message || ""));
    showMessage("Could not open the tiles (" + (e.message || "unknown error") + ").");
  });
  viewer.addHandler("tile-load-failed", function (e) { state.errors.push("tile-load-failed: " + (e.message || "")); });
  viewer.addHandler("tile-drawn", function () {
    if (state.firstTileMs === null) state.firstTileMs = performance.now();
    state.tilesDrawn += 1;
  });
  ["update-viewport", "animation", "resize", "viewport-change"].forEach(function (name) {
    viewer.addHandler(name, scheduleDraw);
  });
  window.addEventListener("resize", scheduleDraw);

  // ------------------------------------------------------------------ geometry
  function imageZoom() {
    return viewer.viewport.viewportToImageZoom(viewer.viewport.getZoom(true));
  }
  function currentLevel() {
    // the level OpenSeadragon draws on top: the highest with at least minPixelRatio (0.5) screen
    // pixels per level pixel, i.e. max_level + 1 + floor(log2(screen pixels per image pixel))
    var z = imageZoom();
    var lv = A.max_level + 1 + Math.floor(Math.log2(Math.max(z, 1e-12)) + 1e-9);
    return Math.max(0, Math.min(A.max_level, lv));
  }
  function currentSize() { return A.lod[currentLevel()]; }
  function toImage(x, y) { return viewer.viewport.viewerElementToImageCoordinates(new OpenSeadragon.Point(x, y)); }
  function toScreen(x, y) { return viewer.viewport.imageToViewerElementCoordinates(new OpenSeadragon.Point(x, y)); }
  function cellRect(s, r, c) {  // on-screen rectangle of cell (r, c) of grid s
    var p0 = toScreen(c * A.width / s, r * A.height / s), p1 = toScreen((c + 1) * A.width / s, (r + 1) * A.height / s);
    return { x: p0.x, y: p0.y, w: p1.x - p0.x, h: p1.y - p0.y };
  }
  api.currentLevel = currentLevel;
  api.currentSize = currentSize;
  api.cellRect = cellRect;

  // ------------------------------------------------------------------ cells (lazy, script tags)
  function indexCells(doc) {
    var byKey = new Map(), classMax = new Map();
    doc.cells.forEach(function (cell) {
      byKey.set(cell.row * doc.size + cell.col, cell);
      cell.top.forEach(function (t) {
        if (t.value !== null && (!classMax.has(t["class"]) || classMax.get(t["class"]) < t.value)) classMax.set(t["class"], t.value);
      });
    });
    return { doc: doc, size: doc.size, byKey: byKey, classMax: classMax };
  }
  function loadCells(s) {
    if (state.cells[s]) return Promise.resolve(state.cells[s]);
    if (state.loading[s]) return state.loading[s];
    var p = new Promise(function (resolve, reject) {
      var done = function () {
        var doc = window["ATLAS_CELLS_" + s];
        if (!doc) { reject(new Error("cells-" + s + ".js did not define ATLAS_CELLS_" + s)); return; }
        state.cells[s] = indexCells(doc);
        resolve(state.cells[s]);
      };
      if (window["ATLAS_CELLS_" + s]) { done(); return; }
      var el = document.createElement("script");
      el.src = "cells-" + s + ".js";
      el.onload = done;
      el.onerror = function () { state.errors.push("cannot load cells-" + s + ".js"); reject(new Error("cannot load cells-" + s + ".js")); };
      document.head.appendChild(el);
    });
    state.loading[s] = p;
    p.then(function () { scheduleDraw(); updateSearchStatus(); }, function () {});
    return p;
  }
  api.loadCells = loadCells;

  function cellAt(x, y) {  // viewer-element pixel -> {s, row, col, cell|null}, or null outside the canvas
    var s = currentSize(), p = toImage(x, y);
    if (p.x < 0 || p.y < 0 || p.x >= A.width || p.y >= A.height) return null;
    var col = Math.floor(p.x * s / A.width), row = Math.floor(p.y * s / A.height);
    var level = state.cells[s];
    if (!level) { loadCells(s); return { s: s, row: row, col: col, cell: null, loading: true }; }
    return { s: s, row: row, col: col, cell: level.byKey.get(row * s + col) || null };
  }
  api.cellAt = cellAt;

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

  function draw() {
    var dpr = window.devicePixelRatio || 1;
    var w = osdEl.clientWidth, h = osdEl.clientHeight;
    if (overlay.width !== Math.round(w * dpr) || overlay.height !== Math.round(h * dpr)) {
      overlay.width = Math.round(w * dpr);
      overlay.height = Math.round(h * dpr);
      overlay.style.width = w + "px";
      overlay.style.height = h + "px";
    }
    var ctx = overlay.getContext("2d");
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, w, h);
    if (!viewer.world.getItemCount()) return;
    var lv = currentLevel(), s = A.lod[lv];
    var level = state.cells[s];
    $("zoom-info").textContent = "grid " + s + "\u00d7" + s + " \u00b7 zoom level " + lv + "/" + A.max_level;
    if (!level) { loadCells(s); return; }
    var a = toImage(0, 0), b = toImage(w, h);
    var c0 = Math.max(0, Math.floor(a.x * s / A.width)), c1 = Math.min(s - 1, Math.floor(b.x * s / A.width));
    var r0 = Math.max(0, Math.floor(a.y * s / A.height)), r1 = Math.min(s - 1, Math.floor(b.y * s / A.height));
    var origin = toScreen(0, 0), far = toScreen(A.width, A.height);
    var cw = (far.x - origin.x) / s, ch = (far.y - origin.y) / s;
    var r, c, cell, x, y;

    if (state.query !== null && state.query >= 0) {  // heatmap: dim everything, then show the cells attributed to the class
      var vmax = level.classMax.get(state.query) || 1;
      ctx.fillStyle = "rgba(20, 22, 32, 0.62)";
      ctx.fillRect(origin.x, origin.y, far.x - origin.x, far.y - origin.y);
      for (r = r0; r <= r1; r++) {
        for (c = c0; c <= c1; c++) {
          cell = level.byKey.get(r * s + c);
          if (!cell) continue;
          var v = classValue(cell, state.query);  // in the cell's top classes, else not attributed
          if (v === null) continue;
          x = origin.x + c * cw; y = origin.y + r * ch;
          var t = Math.max(0, Math.min(1, v / vmax));
          ctx.clearRect(x, y, cw, ch);
          ctx.fillStyle = "rgba(255, 120, 0, " + (0.12 + 0.4 * t).toFixed(3) + ")";
          ctx.fillRect(x, y, cw, ch);
          ctx.strokeStyle = "rgba(255, 140, 0, " + (0.5 + 0.5 * t).toFixed(3) + ")";
          ctx.lineWidth = Math.max(1, Math.min(3, cw / 20));
          ctx.strokeRect(x + ctx.lineWidth / 2, y + ctx.lineWidth / 2, cw - ctx.lineWidth, ch - ctx.lineWidth);
        }
      }
    }

    if (cw >= LABEL_MIN_PX) {  // labels: the top class of each visible cell, where it fits
      var fs = Math.max(10, Math.min(14, Math.floor(cw / 7)));
      ctx.font = "600 " + fs + "px system-ui, -apple-system, 'Segoe UI', Roboto, sans-serif";
      ctx.textBaseline = "middle";
      for (r = r0; r <= r1; r++) {
        for (c = c0; c <= c1; c++) {
          cell = level.byKey.get(r * s + c);
          if (!cell || !cell.top.length) continue;
          var text = fitText(ctx, cell.top[0].name, cw - 8);
          if (!text) continue;
          x = origin.x + c * cw; y = origin.y + (r + 1) * ch;
          var tw = ctx.measureText(text).width;
          ctx.fillStyle = "rgba(255, 255, 255, 0.82)";
          ctx.fillRect(x + (cw - tw) / 2 - 3, y - fs - 7, tw + 6, fs + 4);
          ctx.fillStyle = "#1d1d24";
          ctx.fillText(text, x + (cw - tw) / 2, y - fs / 2 - 5);
        }
      }
    }

    [[state.selected, "#2f55d4", 3], [state.hover, "rgba(20, 20, 30, 0.85)", 2]].forEach(function (item) {
      var sel = item[0];
      if (!sel || sel.s !== s) return;
      ctx.strokeStyle = item[1];
      ctx.lineWidth = item[2];
      ctx.strokeRect(origin.x + sel.col * cw + 1, origin.y + sel.row * ch + 1, cw - 2, ch - 2);
    });
  }

  function classValue(cell, k) {
    for (var i = 0; i < cell.top.length; i++) if (cell.top[i]["class"] === k) return cell.top[i].value;
    return null;
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

  function showCard(hit, x, y) {
    var cell = hit.cell;
    card.innerHTML = "<div class='card-title'>" + fmtInt(cell.count) + " activations</div>" +
      "<div class='card-sub'>cell (" + hit.row + ", " + hit.col + ") of the " + hit.s + "\u00d7" + hit.s + " grid" +
      (A.top_kind === "labels" ? " \u00b7 top labels" : "") + "</div>" + classesHtml(cell);
    card.hidden = false;
    var W = osdEl.clientWidth, H = osdEl.clientHeight, cw = card.offsetWidth, chh = card.offsetHeight;
    var left = x + 16 + cw > W ? x - 16 - cw : x + 16, top = y + 16 + chh > H ? y - 16 - chh : y + 16;
    card.style.left = Math.max(4, left) + "px";
    card.style.top = Math.max(4, top) + "px";
  }
  function hideCard() {
    card.hidden = true;
    if (state.hover) { state.hover = null; scheduleDraw(); }
  }

  function onMove(ev) {
    var rect = osdEl.getBoundingClientRect();
    var x = ev.clientX - rect.left, y = ev.clientY - rect.top;
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
  function openPanel(hit) {
    var cell = hit.cell, s = hit.s, doc = state.cells[s].doc;
    var size = doc.icon_size, scale = Math.max(1, Math.ceil(160 / size));
    var html = "<h2>Cell (" + cell.row + ", " + cell.col + ") of the " + s + "\u00d7" + s + " grid</h2>" +
      "<div class='meta'>" + fmtInt(cell.count) + " activations" +
      (cell.cossim !== null ? " \u00b7 icon cosine similarity " + esc(fmtVal(cell.cossim)) : "") + "</div>";
    if (cell.icon) {
      html += "<h3>Icon (" + size + "\u00d7" + size + " px, shown \u00d7" + scale + ")</h3>" +
        "<canvas class='icon-full' id='panel-icon' role='img' aria-label='feature visualisation of this cell' width='" +
        size * scale + "' height='" + size * scale + "'></canvas>";
    }
    html += "<h3>" + (A.top_kind === "labels" ? "Top labels" : "Top classes (attribution)") + "</h3>" + classesHtml(cell);
    html += "<h3>Dataset examples</h3><div class='examples' id='panel-examples'>";
    if (cell.examples.length) {
      html += cell.examples.map(function (row) {
        return "<img loading='lazy' alt='example image row " + row + "' title='image row " + row + "' src='" +
          esc(doc.example_url.replace("{row}", row)) + "'>";
      }).join("");
    } else {
      html += "<div class='none'>" + (doc.examples ? "no examples for this cell" : "examples are cropped for the finest grids only: zoom in") + "</div>";
    }
    html += "</div>";
    panelBody.innerHTML = html;
    panel.hidden = false;
    if (cell.icon) drawIcon($("panel-icon"), doc, cell.icon[0], cell.icon[1], scale);
    state.selected = { s: s, row: cell.row, col: cell.col };
    scheduleDraw();
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
    panel.hidden = true;
    state.selected = null;
    scheduleDraw();
  }
  api.openPanel = openPanel;
  $("panel-close").addEventListener("click", closePanel);

  viewer.addHandler("canvas-click", function (e) {
    if (!e.quick) return;
    e.preventDefaultAction = true;
    var hit = cellAt(e.position.x, e.position.y);
    if (hit && hit.cell) openPanel(hit); else closePanel();
  });

  // ------------------------------------------------------------------ search
  function findClass(q) {
    q = q.trim().toLowerCase();
    if (!q) return null;
    var ids = A.search_classes, i, name;
    for (i = 0; i < ids.length; i++) if (String(A.class_names[ids[i]]).toLowerCase() === q) return ids[i];
    for (i = 0; i < ids.length; i++) {
      name = String(A.class_names[ids[i]]).toLowerCase();
      if (name.indexOf(q) >= 0) return ids[i];
    }
    return -1;
  }
  function updateSearchStatus() {
    if (state.query === null) { searchStatus.textContent = ""; return; }
    if (state.query < 0) { searchStatus.textContent = "no such class in this atlas"; return; }
    var s = currentSize(), level = state.cells[s];
    if (!level) { searchStatus.textContent = "\u2026"; loadCells(s); return; }
    var n = 0;
    level.byKey.forEach(function (cell) { if (classValue(cell, state.query) !== null) n += 1; });
    searchStatus.textContent = A.class_names[state.query] + ": " + n + " of " + level.byKey.size + " cells (grid " + s + "\u00d7" + s + ")";
  }
  function search(q) {  // exact name, else the first class containing q; -1: no such class
    var k = findClass(q);
    if (k === null) { clearSearch(); return null; }
    state.query = k;
    updateSearchStatus();
    scheduleDraw();
    return k;
  }
  function clearSearch() {
    state.query = null;
    searchInput.value = "";
    updateSearchStatus();
    scheduleDraw();
  }
  api.search = search;
  api.clearSearch = clearSearch;
  searchInput.addEventListener("input", function () {
    if (!searchInput.value.trim()) { clearSearch(); return; }
    var k = findClass(searchInput.value);
    if (k !== null && k >= 0 && String(A.class_names[k]).toLowerCase() === searchInput.value.trim().toLowerCase()) search(searchInput.value);
  });
  $("search").addEventListener("submit", function (e) { e.preventDefault(); search(searchInput.value); });
  $("search-clear").addEventListener("click", clearSearch);
  var lastSize = null;
  viewer.addHandler("animation-finish", function () {
    var s = currentSize();
    if (s !== lastSize) { lastSize = s; updateSearchStatus(); }
  });

  document.addEventListener("keydown", function (e) {
    if (e.key !== "Escape") return;
    if (!panel.hidden) closePanel(); else if (state.query !== null) clearSearch();
  });
})();
