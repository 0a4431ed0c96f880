/* A view of a comparison (`atlas compare`, RUN/compare/<name>/layout-a|b/tiles): one network's layout
 * and cells, the other network's icons of the same cells (the pyramids of this folder), and per cell
 * the change figures (../changes/: summary.js, cells-<s>.js, the layout network's icons as sheets).
 *
 * Active only when the run's index (atlases.js: atlasViewer.atlases.entry) says this page is such a
 * view. Then: a box with the key (which network's icons are shown; the buttons or the X key switch
 * them in place: the layout network's are drawn over the cells from its sheets, the other's are the
 * pyramid), the change heatmap (each compared cell coloured by its change, viridis, with a legend) and
 * the cells changed most (click: fly there and open the panel); in the click panel both icons, both
 * networks' top classes and the cell's figures. Two overlays (core.js's registerOverlay): the icons
 * ("compare-icons", under every other) and the heatmap with the panel section, URL (icons=a|b,
 * change=1) and Esc ("compare"). atlasViewer.compare exposes the state (for tests).
 */
(function () {
  "use strict";

  var api = window.atlasViewer, A = window.ATLAS;
  if (!api || !api.viewer || !A) return;
  var THUMB = 30, PANEL_ICON = 128;
  var state = { summary: null, base: null, icons: "network", heat: false, cells: {}, loading: {}, sheets: {},
                drawnIcons: 0, heatCells: 0, list: [], errors: [], wanted: null };
  api.compare = state;
  var esc = api.esc, fmtVal = api.fmtVal, $ = api.$;

  var CSS = [
    ".cmp-key { display: flex; flex-wrap: wrap; align-items: center; gap: 4px 6px; margin: 6px 0 4px; }",
    ".cmp-key button { padding: 3px 8px; border: 1px solid #c3c7d3; border-radius: 5px; background: #f4f5f9; cursor: pointer; }",
    ".cmp-key button[aria-pressed='true'] { background: #2f55d4; border-color: #2f55d4; color: #fff; }",
    ".cmp-key kbd { border: 1px solid #c3c7d3; border-radius: 3px; padding: 0 4px; font-size: 11px; color: #5a6072; }",
    ".cmp-bar { height: 10px; border-radius: 3px; border: 1px solid rgba(0, 0, 0, .15); }",
    ".cmp-scale { display: flex; justify-content: space-between; color: #5a6072; font-variant-numeric: tabular-nums; }",
    ".cmp-list { list-style: none; margin: 0; padding: 0; }",
    ".cmp-list button { display: flex; align-items: center; gap: 4px; width: 100%; margin: 0 0 3px; padding: 2px; border: 1px solid transparent;",
    "  border-radius: 4px; background: none; cursor: pointer; text-align: left; }",
    ".cmp-list button:hover { border-color: #c3c7d3; background: #f4f5f9; }",
    ".cmp-list .thumb { flex: none; width: " + THUMB + "px; height: " + THUMB + "px; border-radius: 3px; background-color: #eceef3; background-repeat: no-repeat; }",
    ".cmp-list .what { flex: 1; min-width: 0; color: #5a6072; overflow: hidden; text-overflow: ellipsis; white-space: nowrap; }",
    ".cmp-pair { display: grid; grid-template-columns: 1fr 1fr; gap: 8px; }",
    ".cmp-pair figure { margin: 0; min-width: 0; }",
    ".cmp-pair canvas { width: 100%; height: auto; image-rendering: pixelated; background: #eceef3; border-radius: 3px; }",
    ".cmp-pair figcaption, .cmp-pair h4 { font-size: 12px; margin: 2px 0; overflow: hidden; text-overflow: ellipsis; white-space: nowrap; }",
    ".cmp-pair ol { margin: 0; padding-left: 18px; font-size: 12px; }",
    ".cmp-figures { width: 100%; border-collapse: collapse; font-size: 12px; margin: 6px 0; }",
    ".cmp-figures td { padding: 1px 4px; border-bottom: 1px solid #eceef3; }",
    ".cmp-figures td:last-child { text-align: right; font-variant-numeric: tabular-nums; }"
  ].join("\n");

  // ------------------------------------------------------------------ names
  function who(letter) { return letter.toUpperCase() + " (" + state.summary[letter] + ")"; }
  function letterOf(mode) { return mode === "layout" ? state.summary.layout : state.summary.network; }
  function modeOf(letter) { return letter === state.summary.layout ? "layout" : "network"; }

  // ------------------------------------------------------------------ data: cells-<s>.js, icon sheets
  function level(s) {  // this grid's compared cells {doc, byKey}, loaded on first use (null until then)
    if (state.cells[s]) return state.cells[s];
    if (!state.loading[s] && state.summary && state.summary.cells[String(s)]) {
      state.loading[s] = true;
      api.loadScript(state.base + state.summary.cells[String(s)], function () {
        var doc = window["ATLAS_COMPARE_CELLS_" + s], byKey = new Map();
        delete window["ATLAS_COMPARE_CELLS_" + s];
        if (!doc) { state.errors.push("cells-" + s + ".js defined nothing"); return; }
        doc.cells.forEach(function (c) { byKey.set(c.row * s + c.col, c); });
        var max = doc.cells.reduce(function (m, c) { return Math.max(m, c.change || 0); }, 0);
        state.cells[s] = { doc: doc, byKey: byKey, max: max };
        api.scheduleDraw();
        api.emit("compare-cells", s);
      }, function () { state.errors.push("cannot load " + state.base + "cells-" + s + ".js"); });
    }
    return null;
  }
  function sheet(s, k) {  // the layout network's icon sheet k of grid s (an Image; drawn once it has loaded)
    var key = s + ":" + k;
    if (!state.sheets[key]) {
      var img = new Image(), icons = state.summary.levels[String(s)].icons;
      img.onload = function () { img.ready = true; api.scheduleDraw(); };
      img.onerror = function () { state.errors.push("cannot load icon sheet " + img.src); };
      img.src = state.base + icons.url.replace("{sheet}", k);
      state.sheets[key] = img;
    }
    return state.sheets[key];
  }
  function layoutIcon(s, cell) {  // {img, sx, sy, size} of the layout network's icon of a compared cell, or null
    var icons = state.summary.levels[String(s)].icons;
    if (!cell || !cell.icon || !icons) return null;
    var img = sheet(s, cell.icon[0]), slot = cell.icon[1];
    return { img: img, sx: (slot % icons.cols) * icons.size, sy: Math.floor(slot / icons.cols) * icons.size, size: icons.size };
  }

  // ------------------------------------------------------------------ the overlays
  function drawIcons(ctx, v) {  // the layout network's icons in place of the pyramid's
    state.drawnIcons = 0;
    var lv = state.summary && state.icons === "layout" ? level(v.s) : null;
    if (!lv) return;
    ctx.fillStyle = A.background || "#ffffff";
    ctx.fillRect(Math.max(0, v.origin.x), Math.max(0, v.origin.y), Math.min(v.w, v.far.x) - Math.max(0, v.origin.x),
                 Math.min(v.h, v.far.y) - Math.max(0, v.origin.y));
    ctx.imageSmoothingEnabled = true;
    v.forEachCell(function (r, c, x, y) {
      var icon = layoutIcon(v.s, lv.byKey.get(r * v.s + c));
      if (!icon || !icon.img.ready) return;
      ctx.drawImage(icon.img, icon.sx, icon.sy, icon.size, icon.size, x, y, v.cw, v.ch);
      state.drawnIcons += 1;
    });
  }
  function heatColour(cell, lv) { return api.colour.scale(lv.max > 0 ? (cell.change || 0) / lv.max : 0); }
  function drawHeat(ctx, v) {  // every compared cell in the colour of its change (off while a class search shows)
    state.heatCells = 0;
    var lv = state.summary && state.heat && v.query === null ? level(v.s) : null;
    if (!lv) return;
    v.forEachCell(function (r, c, x, y) {
      var cell = lv.byKey.get(r * v.s + c);
      if (!cell || cell.change === null) return;
      var rgb = heatColour(cell, lv);
      ctx.fillStyle = api.colour.rgba(rgb, 0.62);
      ctx.fillRect(x, y, v.cw, v.ch);
      if (v.cw >= 6) {
        ctx.strokeStyle = api.colour.css(rgb);
        ctx.lineWidth = Math.max(1, Math.min(3, v.cw / 24));
        ctx.strokeRect(x + ctx.lineWidth / 2, y + ctx.lineWidth / 2, v.cw - ctx.lineWidth, v.ch - ctx.lineWidth);
      }
      state.heatCells += 1;
    });
    updateLegend(v.s, lv);
  }

  // ------------------------------------------------------------------ the box: key, heatmap legend, changed most
  function boxHtml() {
    var sm = state.summary, lay = sm.layout, net = sm.network;
    var key = (lay === "a" ? ["layout", "network"] : ["network", "layout"]).map(function (mode) {
      return "<button type='button' data-icons='" + mode + "' aria-pressed='" + (state.icons === mode) + "' title='show " +
        esc(who(letterOf(mode))) + "&#39;s icons (X switches)'>" + esc(who(letterOf(mode))) + "</button>";
    }).join("");
    return "<div class='compare-head'><strong>" + esc(who("a")) + " vs " + esc(who("b")) + "</strong>" +
      "<button type='button' id='cmp-fold' class='legend-button' aria-expanded='true'>Hide</button></div>" +
      "<div class='cmp-key' role='group' aria-label='Icons shown'><span>Icons:</span>" + key + "<kbd>X</kbd></div>" +
      "<label class='compare-on'><input type='checkbox' id='cmp-heat'" + (state.heat ? " checked" : "") +
      "> colour the cells by change</label>" +
      "<div id='cmp-legend' hidden><div class='cmp-bar' id='cmp-bar'></div><div class='cmp-scale'><span>0</span>" +
      "<span id='cmp-legend-what'></span><span id='cmp-legend-max'></span></div></div>" +
      "<div id='cmp-body'><p class='explain'>On " + esc(sm[lay]) + "&#39;s layout: its cells, " + esc(sm[net]) +
      "&#39;s activations of the same images (" + esc(sm.pairing || "") + " pairing).</p><h3 id='cmp-list-title'>Changed most</h3><ol class='cmp-list' id='cmp-list'><li>\u2026</li></ol>" +
      "<p class='explain'>" + esc(sm.definitions.change) + ".</p></div>";
  }
  function updateLegend(s, lv) {
    var box = $("cmp-legend");
    if (!box) return;
    box.hidden = !state.heat;
    $("cmp-bar").style.background = "linear-gradient(to right, " + api.colour.VIRIDIS.join(", ") + ")";
    $("cmp-legend-max").textContent = fmtVal(lv.max);
    $("cmp-legend-what").textContent = "change, grid " + s + "\u00d7" + s;
  }
  function setIcons(mode) {
    state.icons = mode;
    document.querySelectorAll(".cmp-key button").forEach(function (b) {
      b.setAttribute("aria-pressed", String(b.getAttribute("data-icons") === mode));
    });
    api.scheduleDraw();
    if (api.writeUrl) api.writeUrl();
  }
  function setHeat(on) {
    state.heat = on;
    var box = $("cmp-heat");
    if (box) box.checked = on;
    if (!on && $("cmp-legend")) $("cmp-legend").hidden = true;
    api.scheduleDraw();
    if (api.writeUrl) api.writeUrl();
  }
  api.compareIcons = function (letter) { setIcons(modeOf(letter)); };  // "a" or "b" (for tests and links)
  api.compareHeat = setHeat;

  function thumb(url, cols, size, slot) {
    var scale = THUMB / size;
    return "<span class='thumb' style=\"background-image:url('" + esc(url) + "');background-size:" + cols * size * scale +
      "px auto;background-position:-" + (slot % cols) * THUMB + "px -" + Math.floor(slot / cols) * THUMB + "px\"></span>";
  }
  function listItem(s, own, cell) {  // one changed cell: both networks' icons, its place, its change
    var icons = state.summary.levels[String(s)].icons, doc = own.doc, mine = own.byKey.get(cell.row * s + cell.col);
    var a = cell.icon && icons ? thumb(state.base + icons.url.replace("{sheet}", cell.icon[0]), icons.cols, icons.size, cell.icon[1]) : "<span class='thumb'></span>";
    var b = mine && mine.icon ? thumb(doc.icon_url.replace("{sheet}", mine.icon[0]), doc.icon_sheet_cols, doc.icon_size, mine.icon[1]) : "<span class='thumb'></span>";
    return "<li><button type='button' data-row='" + cell.row + "' data-col='" + cell.col + "' title='cell (" + cell.row + ", " +
      cell.col + "), rank " + cell.rank + ": change " + fmtVal(cell.change) + "'>" + a + b + "<span class='what'>(" +
      cell.row + ", " + cell.col + ")</span><span class='value'>" + fmtVal(cell.change) + "</span></button></li>";
  }
  function fillList(s) {
    Promise.all([api.loadCells(s), new Promise(function (resolve) {
      if (level(s)) resolve(); else api.on("compare-cells", function (got) { if (got === s) resolve(); });
    })]).then(function (got) {
      var lv = state.cells[s], rc = state.summary.levels[String(s)].changed;
      state.list = rc.map(function (p) { return lv.byKey.get(p[0] * s + p[1]); }).filter(Boolean);
      $("cmp-list-title").textContent = "Changed most (grid " + s + "\u00d7" + s + ")";
      $("cmp-list").innerHTML = state.list.map(function (cell) { return listItem(s, got[0], cell); }).join("") || "<li class='none'>no cell compared</li>";
      $("cmp-list").querySelectorAll("button[data-row]").forEach(function (b) {
        b.addEventListener("click", function () { api.flyToCell(s, Number(b.getAttribute("data-row")), Number(b.getAttribute("data-col"))); });
      });
    }, function () {});
  }
  function buildBox() {
    var box = $("compare");
    box.setAttribute("aria-label", "Network comparison");
    box.innerHTML = boxHtml();
    box.hidden = false;
    box.querySelectorAll(".cmp-key button").forEach(function (b) {
      b.addEventListener("click", function () { setIcons(b.getAttribute("data-icons")); });
    });
    $("cmp-heat").addEventListener("change", function (e) { setHeat(e.target.checked); });
    $("cmp-fold").addEventListener("click", function (e) {
      var body = $("cmp-body"), hide = !body.hidden;
      body.hidden = hide;
      e.target.textContent = hide ? "Show" : "Hide";
      e.target.setAttribute("aria-expanded", String(!hide));
    });
    if (window.innerWidth <= 640) $("cmp-fold").click();  // narrow screens: the key and the heatmap switch, the list folded
    fillList(api.lod.finest.size);
  }

  // ------------------------------------------------------------------ the click panel
  function iconCanvas(img, sx, sy, size) {
    var canvas = document.createElement("canvas");
    canvas.width = canvas.height = PANEL_ICON;
    var draw = function () {
      var ctx = canvas.getContext("2d");
      ctx.imageSmoothingEnabled = false;
      ctx.drawImage(img, sx, sy, size, size, 0, 0, PANEL_ICON, PANEL_ICON);
      canvas.setAttribute("data-loaded", "1");
    };
    if (img.complete && img.naturalWidth) draw(); else img.addEventListener("load", draw);
    return canvas;
  }
  function networkIcon(hit) {  // this view's own icon of the cell (the network's), from the tile's sheets
    var doc = state.summary && api.state.cells[hit.s] ? api.state.cells[hit.s].doc : null;
    if (!doc || !hit.cell || !hit.cell.icon) return null;
    var img = new Image(), cols = doc.icon_sheet_cols, slot = hit.cell.icon[1];
    img.src = doc.icon_url.replace("{sheet}", hit.cell.icon[0]);
    return iconCanvas(img, (slot % cols) * doc.icon_size, Math.floor(slot / cols) * doc.icon_size, doc.icon_size);
  }
  function figureRows(cell, total) {
    var sm = state.summary, lay = who(sm.layout), net = who(sm.network);
    return [["coherence in " + lay, cell.coherence_layout], ["coherence in " + net, cell.coherence_network],
            ["coherence change", cell.coherence_change], ["relation change", cell.relation_change],
            ["class shift", cell.class_shift], ["change (rank " + cell.rank + " of " + total + ")", cell.change]]
      .map(function (r) { return "<tr><td>" + esc(r[0]) + "</td><td>" + (r[1] === null ? "\u2013" : esc(fmtVal(r[1]))) + "</td></tr>"; }).join("");
  }
  function classList(title, top) {
    return "<div><h4 title='" + esc(title) + "'>" + esc(title) + "</h4><ol>" + (top.length ? top.map(function (t) {
      return "<li>" + esc(t.name) + " <span class='value'>" + esc(fmtVal(t.value)) + "</span></li>";
    }).join("") : "<li>none stored</li>") + "</ol></div>";
  }
  function panelSection(hit) {  // both icons, both networks' top classes, the change figures
    var lv = state.summary ? level(hit.s) : null, cell = lv && lv.byKey.get(hit.row * hit.s + hit.col);
    if (!cell) return null;
    var sm = state.summary, lay = sm.layout, net = sm.network, node = document.createElement("div");
    node.id = "panel-compare";
    node.innerHTML = "<h3>" + esc(who("a")) + " vs " + esc(who("b")) + "</h3><div class='cmp-pair' id='panel-compare-icons'></div>" +
      "<table class='cmp-figures' id='panel-compare-figures'>" + figureRows(cell, lv.doc.cells.length) + "</table>" +
      "<div class='cmp-pair' id='panel-compare-classes'>" + classList(who(lay) + "'s top classes", cell.top_layout) +
      classList(who(net) + "'s top classes", cell.top_network) + "</div>";
    var pair = node.querySelector("#panel-compare-icons"), icon = layoutIcon(hit.s, cell), own = networkIcon(hit);
    [[lay, icon ? iconCanvas(icon.img, icon.sx, icon.sy, icon.size) : null], [net, own]].sort(function (x, y) { return x[0] < y[0] ? -1 : 1; })
      .forEach(function (item) {
        var fig = document.createElement("figure"), cap = document.createElement("figcaption");
        if (item[1]) { item[1].setAttribute("data-net", item[0]); fig.appendChild(item[1]); }
        cap.textContent = who(item[0]) + (item[1] ? "" : ": no icon");
        fig.appendChild(cap);
        pair.appendChild(fig);
      });
    return node;
  }

  // ------------------------------------------------------------------ start
  function fromUrl(params) {
    state.wanted = { icons: params.icons || null, heat: params.change === "1" };
    if (state.summary) applyWanted();
  }
  function applyWanted() {
    var w = state.wanted || {};
    if (w.icons === "a" || w.icons === "b") setIcons(modeOf(w.icons));
    setHeat(!!w.heat);
  }
  function onKey(e) {
    var t = e.target, typing = t && (t.tagName === "INPUT" || t.tagName === "SELECT" || t.tagName === "TEXTAREA");
    if (typing || e.ctrlKey || e.metaKey || e.altKey || (e.key !== "x" && e.key !== "X")) return;
    setIcons(state.icons === "layout" ? "network" : "layout");
  }
  function start() {
    var sm = state.summary, style = document.createElement("style"), title = document.querySelector(".title");
    style.textContent = CSS;
    document.head.appendChild(style);
    if (title) { title.textContent = "Compare: " + sm.a + " vs " + sm.b; title.title = title.textContent; }
    document.title = "Compare \u00b7 " + sm.a + " vs " + sm.b + " \u00b7 on " + sm[sm.layout] + "'s layout";
    buildBox();
    api.registerOverlay({ name: "compare-icons", order: 5, draw: drawIcons });
    api.registerOverlay({
      name: "compare", order: 15, draw: drawHeat, panelSection: panelSection, fromUrl: fromUrl,
      urlPart: function () {
        var parts = [];
        if (state.icons === "layout") parts.push("icons=" + letterOf("layout"));
        if (state.heat) parts.push("change=1");
        return parts.length ? parts.join("&") : null;
      }
    });
    document.addEventListener("keydown", onKey);
    applyWanted();
  }
  api.on("atlas-index", function () {  // atlases.js found this page's entry in the run's index
    var e = api.atlases && api.atlases.entry;
    if (!e || e.kind !== "compare" || state.base) return;
    state.base = (A.atlases_root || "../") + e.changes;
    api.loadScript(state.base + "summary.js", function () {
      state.summary = window.ATLAS_COMPARE || null;
      delete window.ATLAS_COMPARE;
      if (state.summary) start(); else state.errors.push("summary.js defined nothing");
    }, function () { state.errors.push("cannot load " + state.base + "summary.js"); });
  });
})();
