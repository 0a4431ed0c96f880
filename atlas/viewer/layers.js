/* The layers of one run (`model.layers`): a layer picker in the header, and "where these images go":
 * the images of a cell of one layer's atlas shown where they land on another layer's atlas.
 *
 * Only in the atlas of a layer of a several-layer run: its atlas.json names the run's folder
 * (layer_root, relative to this viewer: "../" in RUN/tiles, "../../../" in RUN/layers/<slug>/tiles)
 * and the follow step's index (follow_index: layer_root + "follow/follow.js"). A one-layer atlas has
 * neither, and this script adds nothing. The follow step's files (atlas/formats/_follow.py) are
 * loaded with script tags (file:// and served alike): follow.js (window.ATLAS_FOLLOW: the layers,
 * their pairs) at start, for the picker; coords-<i>.js (window.ATLAS_FOLLOW_COORDS_<i>: x, y of every
 * image row on layer i's atlas, float32, NaN: not placed) and shared-<a>-<b>.js
 * (window.ATLAS_FOLLOW_SHARED_<a>_<b>: per row, how many of its k nearest images two layers share,
 * uint8, 255: not placed) only once a follow or a cell's panel asks for them.
 *
 * - The picker lists the layers (name, channels, grid) and opens the chosen one's index.html (the
 *   page's path names the layer; so does the hash's layer=<name>) keeping the class shown, the zoom
 *   (the same z when the two layers' finest grids have one size, else level=<s>: the grid nearest s)
 *   and the selected cell, whose images are followed there (the view centred on their busiest cell).
 * - A follow, follow=<source layer>:<s>,<row>,<col> in the hash: the image rows in that cell of the
 *   source layer's s x s grid, counted in every cell of the grid shown here (at each zoom level);
 *   cells coloured by their count, a legend with the total and the share the top `top_cells` cells
 *   hold. Its Clear button or Esc ends it. Following back to the source layer selects the cell.
 * - A cell's panel: "Where these images go" (a button per other layer) and, per other layer, the
 *   cell's neighbourhood persistence (the mean over its images of shared / k) beside the run's mean
 *   and chance for that pair.
 *
 * One overlay ("layers", core.js's registerOverlay): draw, panelSection, urlPart, fromUrl, onEscape.
 * window.atlasViewer.layers exposes its state (for tests).
 */
(function () {
  "use strict";

  var A = window.ATLAS, api = window.atlasViewer;
  if (!A || !api || !api.viewer || !A.follow_index) return;  // one layer (or the viewer did not start): nothing
  var ROOT = A.layer_root || "", BASE = A.follow_index.slice(0, A.follow_index.lastIndexOf("/") + 1);
  var RAMP = ["#51127c", "#b73779", "#fc8961", "#fcfdbf"];  // magma's upper part: few -> many followed images
  var DIM = "rgba(18, 20, 30, 0.62)";
  var BADGE_MIN_PX = 30;  // a cell shows its count when at least this wide on screen

  var state = api.state, esc = api.esc, fmtInt = api.fmtInt, $ = api.$;
  var out = {
    index: null,        // window.ATLAS_FOLLOW
    current: -1,        // this page's layer in index.layers
    follow: null,       // {src, s, row, col, rows (null while loading), xy, levels: {s: density}}
    wanted: null,       // the URL's follow, kept until the index has loaded
    persistence: null,  // the selected cell's: {cell: "s,row,col", n, layers: {j: {mean, images, k, run, chance}}}
    loads: [],          // the follow files asked for, in order
    errors: [],
    lastDraw: { s: null, cells: 0 }
  };
  api.layers = out;
  var coords = {}, shared = {}, legendLevel = null;
  // the hash as the page was opened (the map may have opened, and rewritten it, before this script ran)
  var startHash = api.openedHash === undefined ? location.hash : api.openedHash, start = api.urlParams(startHash);
  var LEVEL = parseInt(start.level, 10) || null, registered = false;

  // ------------------------------------------------------------------ data
  function loadGlobal(file, name) {  // -> Promise of the object BASE + file defines as window[name]
    out.loads.push(file);
    return new Promise(function (resolve, reject) {
      api.loadScript(BASE + file, function () {
        var doc = window[name];
        delete window[name];
        if (doc) resolve(doc); else reject(new Error(file + " did not define " + name));
      }, function () { reject(new Error("cannot load " + BASE + file)); });
    });
  }
  function failed(e) { out.errors.push(e.message); state.errors.push("layers: " + e.message); }
  function bytes(text) {
    var bin = atob(text), b = new Uint8Array(bin.length);
    for (var i = 0; i < bin.length; i++) b[i] = bin.charCodeAt(i);
    return b;
  }
  function decodeCoords(doc) {  // -> Float32Array [n * 2]: x, y of each row (little-endian on disk)
    var b = bytes(doc.values), dv = new DataView(b.buffer), xy = new Float32Array(b.length / 4);
    for (var i = 0; i < xy.length; i++) xy[i] = dv.getFloat32(4 * i, true);
    return xy;
  }
  function getCoords(i) {
    if (!coords[i]) coords[i] = loadGlobal(out.index.layers[i].coords, "ATLAS_FOLLOW_COORDS_" + i).then(decodeCoords);
    return coords[i];
  }
  function pairOf(a, b) {
    var lo = Math.min(a, b), hi = Math.max(a, b);
    return out.index.pairs.filter(function (p) { return p.a === lo && p.b === hi; })[0] || null;
  }
  function getShared(a, b) {  // -> Promise of {k, values: Uint8Array, pair} (the pair in either order)
    var p = pairOf(a, b), key = Math.min(a, b) + "-" + Math.max(a, b);
    if (!p) return Promise.reject(new Error("follow.js has no pair of layers " + key));
    if (!shared[key]) {
      shared[key] = loadGlobal(p.shared, "ATLAS_FOLLOW_SHARED_" + p.a + "_" + p.b).then(function (doc) {
        return { k: doc.k, values: bytes(doc.values), pair: p };
      });
    }
    return shared[key];
  }

  // ------------------------------------------------------------------ cells of image rows
  function cellId(xy, r, s) {  // row r's cell at grid s, row * s + col (atlas.ops.binning.cell_ids); -1: not placed
    var x = xy[2 * r], y = xy[2 * r + 1];
    if (!isFinite(x) || !isFinite(y)) return -1;
    var col = Math.min(s - 1, Math.floor(Math.min(1, Math.max(0, x)) * s));
    return Math.min(s - 1, Math.floor(Math.min(1, Math.max(0, y)) * s)) * s + col;
  }
  function rowsIn(xy, s, row, col) {  // the image rows in cell (row, col) of grid s
    var want = row * s + col, rows = [];
    for (var r = 0; r < xy.length / 2; r++) if (cellId(xy, r, s) === want) rows.push(r);
    return rows;
  }
  // where rows land at grid s of the layout xy: counts per cell, the busiest first, the share of the top ones
  function density(xy, rows, s) {
    var counts = new Map(), placed = 0, max = 0;
    rows.forEach(function (r) {
      var id = cellId(xy, r, s);
      if (id < 0) return;
      var n = (counts.get(id) || 0) + 1;
      counts.set(id, n);
      placed += 1;
      max = Math.max(max, n);
    });
    var order = Array.from(counts.keys()).sort(function (a, b) { return counts.get(b) - counts.get(a) || a - b; });
    var top = order.slice(0, out.index.top_cells).map(function (id) { return [Math.floor(id / s), id % s, counts.get(id)]; });
    var held = top.reduce(function (t, c) { return t + c[2]; }, 0);
    return { s: s, counts: counts, placed: placed, max: max, cells: counts.size, top: top, topShare: placed ? held / placed : 0 };
  }
  function levelOf(f, s) { return f.levels[s] || (f.levels[s] = density(f.xy, f.rows, s)); }
  out.density = function (s) { var f = out.follow; return f && f.rows ? levelOf(f, s) : null; };

  // ------------------------------------------------------------------ the layers, their names
  function layerLabel(L) { return L.layer + " \u00b7 " + L.channels + " ch \u00b7 " + L.grid[0] + "\u00d7" + L.grid[1]; }
  function finest(L) { return Math.max.apply(null, L.sizes); }
  function nearest(sizes, s) {  // the size in sizes nearest s (by ratio)
    return sizes.reduce(function (best, t) { return Math.abs(Math.log(t / s)) < Math.abs(Math.log(best / s)) - 1e-9 ? t : best; });
  }
  out.levelFor = function (s) { return nearest(api.lod.grids.map(function (g) { return g.size; }), s); };
  function cellName(L, f) { return L.layer + " cell (" + f.row + ", " + f.col + ") of the " + f.s + "\u00d7" + f.s + " grid"; }

  // ------------------------------------------------------------------ following
  function parseFollow(text) {  // "0:8,3,4" -> {src, s, row, col}; null when malformed
    var m = /^(\d+):(\d+),(\d+),(\d+)$/.exec(text || "");
    return m ? { src: Number(m[1]), s: Number(m[2]), row: Number(m[3]), col: Number(m[4]) } : null;
  }
  function followText(f) { return f.src + ":" + [f.s, f.row, f.col].join(","); }
  function valid(f) {
    var L = f && out.index.layers[f.src];
    return !!L && L.sizes.indexOf(f.s) >= 0 && f.row < f.s && f.col < f.s;
  }
  function setFollow(f) {  // follow {src, s, row, col} here (null: end it); the index has loaded
    if (f && !valid(f)) f = null;
    if ((f ? followText(f) : null) === (out.follow ? followText(out.follow) : null)) return;
    var fo = out.follow = f ? { src: f.src, s: f.s, row: f.row, col: f.col, rows: null, xy: null, levels: {} } : null;
    legendLevel = null;
    showLegend();
    api.scheduleDraw();
    api.writeUrl();
    if (!fo) return;
    Promise.all([getCoords(fo.src), getCoords(out.current)]).then(function (xy) {
      fo.rows = rowsIn(xy[0], fo.s, fo.row, fo.col);
      fo.xy = xy[1];
      legendLevel = null;
      api.scheduleDraw();
    }, failed);
  }
  out.setFollow = function (text) { if (out.index) setFollow(parseFollow(text)); else out.wanted = parseFollow(text); };
  out.clear = function () { setFollow(null); };

  // ------------------------------------------------------------------ switching layers
  function viewParts(params) {  // what of this view another layer keeps: its zoom (and, for now, centre), class, located image
    var parts = ["x", "y", "z"].filter(function (k) { return params[k]; }).map(function (k) { return k + "=" + params[k]; });
    if (params["class"]) parts.push("class=" + encodeURIComponent(params["class"]));
    if (params.located) parts.push("located=" + encodeURIComponent(params.located));
    return parts;
  }
  function centreParts(parts, x, y) {  // the view's centre moved to (x, y)
    return parts.filter(function (p) { return !/^[xy]=/.test(p); }).concat(["x=" + x.toFixed(4), "y=" + y.toFixed(4)]);
  }
  function inside(c) {  // a view centred on c, at this zoom, moved to show as much of the atlas as it can
    var vs = api.viewSize(), px = api.atlasPx(false), w = vs.w / px / 2, h = vs.h / px / 2;
    return { x: Math.min(Math.max(c.x, Math.min(0.5, w)), Math.max(0.5, 1 - w)),
             y: Math.min(Math.max(c.y, Math.min(0.5, h)), Math.max(0.5, 1 - h)) };
  }
  function landing(j, f) {  // -> Promise of a centre showing the busiest cell f's images reach on layer j, or null
    var s = nearest(out.index.layers[j].sizes, api.currentSize());
    return Promise.all([getCoords(f.src), getCoords(j)]).then(function (xy) {
      var d = density(xy[1], rowsIn(xy[0], f.s, f.row, f.col), s);
      return d.top.length ? inside({ x: (d.top[0][1] + 0.5) / s, y: (d.top[0][0] + 0.5) / s }) : null;
    }, function (e) { failed(e); return null; });
  }
  function switchTo(j, f) {  // open layer j's viewer with this view's zoom and class, following f's images (or null)
    var L = out.index && out.index.layers[j];
    if (!L || j === out.current) return false;
    api.writeUrl();
    var parts = viewParts(api.urlParams()), here = out.index.layers[out.current];
    if (finest(here) !== finest(L)) parts.push("level=" + api.currentSize());
    var go = function (centre) {
      if (centre) parts = centreParts(parts, centre.x, centre.y);
      parts.push("layer=" + encodeURIComponent(L.layer));
      location.href = ROOT + L.tiles + "index.html#" + parts.join("&");
    };
    if (f && f.src === j) {  // back to the images' own layer: their cell, selected
      parts.push("cell=" + [f.s, f.row, f.col].join(","));
      go({ x: (f.col + 0.5) / f.s, y: (f.row + 0.5) / f.s });
    } else if (f) {
      parts.push("follow=" + followText(f));
      landing(j, f).then(go);
    } else {
      go(null);
    }
    return true;
  }
  function carried() {  // what a switch follows: the selected cell's images, else those followed now
    var sel = state.selected;
    if (sel) return { src: out.current, s: sel.s, row: sel.row, col: sel.col };
    return out.follow ? { src: out.follow.src, s: out.follow.s, row: out.follow.row, col: out.follow.col } : null;
  }
  out.switchTo = function (j) { return switchTo(j, carried()); };
  out.followInto = function (j, hit) { return switchTo(j, { src: out.current, s: hit.s, row: hit.row, col: hit.col }); };

  // ------------------------------------------------------------------ the picker
  var pick = document.createElement("label");
  pick.className = "layer-pick";
  pick.id = "layer-pick-box";
  pick.hidden = true;
  pick.innerHTML = "<span>Layer</span><select id='layer-pick' aria-label='Show another layer of this run'></select>";
  document.querySelector(".header").insertBefore(pick, document.getElementById("run-info"));
  var select = pick.querySelector("select");
  function buildPicker() {
    select.innerHTML = out.index.layers.map(function (L, i) {
      return "<option value='" + i + "'" + (i === out.current ? " selected" : "") + ">" + esc(layerLabel(L)) + "</option>";
    }).join("");
    select.title = "The layers of this run (model.layers): channels, the layer's grid of positions. " +
      "Another opens its atlas, following the selected cell's images there.";
    pick.hidden = false;
    select.addEventListener("change", function () {
      if (!out.switchTo(Number(select.value))) select.value = String(out.current);
    });
    window.addEventListener("pageshow", function () { select.value = String(out.current); });  // back from another layer
  }

  // ------------------------------------------------------------------ the legend
  var legend = document.createElement("div");
  legend.className = "legend layers-legend";
  legend.id = "layers-legend";
  legend.hidden = true;
  legend.setAttribute("aria-live", "polite");
  legend.innerHTML = "<div class='legend-title'><span>Followed images</span>" +
    "<span class='layers-legend-buttons'><button type='button' id='layers-busiest' class='legend-button' title='Centre the cell most of them land in'>Busiest</button>" +
    "<button type='button' id='layers-clear' class='legend-button' title='Stop following these images (Esc)'>Clear</button></span></div>" +
    "<div id='layers-legend-name' class='layers-legend-name'></div>" +
    "<div class='legend-bar' style='background: linear-gradient(to right, " + RAMP.join(", ") + ")'></div>" +
    "<div class='legend-scale'><span>1</span><span>images per cell</span><span id='layers-legend-max'></span></div>" +
    "<div id='layers-legend-text' class='search-status'></div>";
  document.getElementById("main").appendChild(legend);
  legend.querySelector("#layers-clear").addEventListener("click", function () { out.clear(); });
  legend.querySelector("#layers-busiest").addEventListener("click", function () {
    var d = out.density(api.currentSize());
    if (d && d.top.length) api.zoomTo(api.atlasPx(false), (d.top[0][1] + 0.5) / d.s, (d.top[0][0] + 0.5) / d.s);
  });

  function legendText(f, d) {
    var n = f.rows.length, here = out.index.layers[out.current].layer;
    if (!n) return "no image of that cell is placed on " + here;
    var t = api.plural(n, "image") + (d.placed < n ? " (" + fmtInt(d.placed) + " placed here)" : "") + " in " +
      api.plural(d.cells, "cell") + " of " + here + "'s " + d.s + "\u00d7" + d.s + " grid";
    var k = Math.min(out.index.top_cells, d.cells);
    return t + "; the top " + (k === 1 ? "cell holds " : k + " cells hold ") + Math.round(100 * d.topShare) + "% of them";
  }
  function showLegend(s) {  // the legend of the follow at grid s (the grid shown)
    var f = out.follow;
    legend.hidden = !f;
    if (!f) return;
    $("layers-legend-name").textContent = "from " + cellName(out.index.layers[f.src], f);
    var d = f.rows && s ? levelOf(f, s) : null;
    $("layers-legend-max").textContent = d ? fmtInt(d.max) : "";
    $("layers-legend-text").textContent = d ? legendText(f, d) : "\u2026";
    $("layers-busiest").disabled = !(d && d.top.length);
    legendLevel = d ? s : null;
  }
  function placeLegend() {  // above the class legend when both show
    var cls = $("legend"), bottom = cls && !cls.hidden ? 36 + cls.offsetHeight + 6 : 36;
    if (legend.style.bottom !== bottom + "px") legend.style.bottom = bottom + "px";
  }

  // ------------------------------------------------------------------ drawing
  function ramp(t) {  // t in [0, 1] -> [r, g, b] along RAMP
    var stops = RAMP.map(api.colour.rgb), x = Math.max(0, Math.min(1, t)) * (stops.length - 1);
    var i = Math.min(stops.length - 2, Math.floor(x)), u = x - i;
    return [0, 1, 2].map(function (c) { return Math.round(stops[i][c] + (stops[i + 1][c] - stops[i][c]) * u); });
  }
  function colourOf(n, max) {  // a cell holding n of the followed images, max in the busiest: {rgb, alpha}
    var t = max > 1 ? (n - 1) / (max - 1) : 1;
    return { rgb: ramp(0.15 + 0.85 * t), alpha: 0.42 + 0.3 * t };
  }
  out.colourOf = colourOf;
  function badge(ctx, x, y, n) {  // the count, at the cell's top left
    var text = String(n), w = ctx.measureText(text).width + 8;
    ctx.fillStyle = "rgba(20, 20, 30, 0.82)";
    ctx.fillRect(x + 3, y + 3, w, 16);
    ctx.fillStyle = "#fff";
    ctx.fillText(text, x + 7, y + 11);
  }
  function paintCell(ctx, v, x, y, n, max) {
    var c = colourOf(n, max), lw = Math.max(2, Math.min(4, v.cw / 16));
    if (v.query === null) {  // alone: the cell filled; over a class heatmap: outlined only
      ctx.clearRect(x, y, v.cw, v.ch);
      ctx.fillStyle = api.colour.rgba(c.rgb, c.alpha);
      ctx.fillRect(x, y, v.cw, v.ch);
    }
    if (v.cw >= 6) {
      ctx.strokeStyle = api.colour.css(c.rgb);
      ctx.lineWidth = v.query === null ? Math.max(1, lw / 2) : lw;
      ctx.strokeRect(x + ctx.lineWidth / 2, y + ctx.lineWidth / 2, v.cw - ctx.lineWidth, v.ch - ctx.lineWidth);
    }
    if (v.cw >= BADGE_MIN_PX) badge(ctx, x, y, n);
  }
  function draw(ctx, v) {  // the overlay's draw: each visible cell by how many followed images land there
    var f = out.follow;
    out.lastDraw = { s: null, cells: 0 };
    if (f) placeLegend();
    if (!f || !f.rows) return;
    var d = levelOf(f, v.s);
    if (legendLevel !== v.s) showLegend(v.s);
    if (v.query === null) {
      ctx.fillStyle = DIM;
      ctx.fillRect(v.origin.x, v.origin.y, v.far.x - v.origin.x, v.far.y - v.origin.y);
    }
    ctx.font = "600 11px system-ui, -apple-system, 'Segoe UI', Roboto, sans-serif";
    ctx.textBaseline = "middle";
    v.forEachCell(function (r, c, x, y) {
      var n = d.counts.get(r * v.s + c);
      if (!n) return;
      paintCell(ctx, v, x, y, n, d.max);
      out.lastDraw.cells += 1;
    });
    out.lastDraw.s = v.s;
  }

  // ------------------------------------------------------------------ the click panel
  function persistenceHtml(j, fig) {
    var pct = function (x) { return (100 * x).toFixed(1) + "%"; };
    return "<span class='layers-persist-name'>" + esc(out.index.layers[j].layer) + "</span> <strong class='layers-persist-value'>" +
      (fig.images ? pct(fig.mean) : "\u2013") + "</strong> <span class='layers-persist-ref'>(run " + pct(fig.run) + ", chance " +
      pct(fig.chance) + (fig.images ? "; " + api.plural(fig.images, "image") : "; no image placed") + ")</span>";
  }
  function fillPersistence(box, hit, others) {  // per other layer: the mean share of neighbours kept over the cell's images
    var fig = out.persistence = { cell: [hit.s, hit.row, hit.col].join(","), n: null, layers: {} };
    getCoords(out.current).then(function (xy) {
      var rows = rowsIn(xy, hit.s, hit.row, hit.col);
      fig.n = rows.length;
      others.forEach(function (j) {
        getShared(out.current, j).then(function (sh) {
          var kept = rows.map(function (r) { return sh.values[r]; }).filter(function (v) { return v !== 255; });
          var sum = kept.reduce(function (t, v) { return t + v; }, 0);
          fig.layers[j] = { mean: kept.length ? sum / kept.length / sh.k : null, images: kept.length, k: sh.k,
                            run: sh.pair.mean_share, chance: sh.pair.chance };
          var li = box.querySelector("li[data-layer='" + j + "']");
          li.innerHTML = persistenceHtml(j, fig.layers[j]);
          li.setAttribute("data-mean", String(fig.layers[j].mean));
        }, failed);
      });
    }, failed);
  }
  function panelSection(hit) {  // the overlay's panelSection: follow the cell's images, their neighbourhoods kept
    if (!out.index || out.current < 0 || !hit.cell) return null;
    var others = out.index.layers.map(function (L, j) { return j; }).filter(function (j) { return j !== out.current; });
    var box = document.createElement("div");
    box.id = "layers-panel";
    box.innerHTML = "<h3>Where these images go</h3><div class='layers-go'>" + others.map(function (j) {
      var L = out.index.layers[j];
      return "<button type='button' class='legend-button' data-layer='" + j + "' title='Open " + esc(L.layer) +
        "&#39;s atlas with the images of this cell shown where they land there'>" + esc(L.layer) + " \u2192</button>";
    }).join("") + "</div><h3>Neighbourhood kept</h3><ul class='layers-persist' id='layers-persist'>" + others.map(function (j) {
      return "<li data-layer='" + j + "'>" + esc(out.index.layers[j].layer) + " \u2026</li>";
    }).join("") + "</ul><p class='explain'>Of each image's " + out.index.k + " nearest images here, the share still among its " +
      out.index.k + " nearest on that layer (mean over the cell); the run's mean and chance beside it.</p>";
    box.querySelectorAll("button[data-layer]").forEach(function (b) {
      b.addEventListener("click", function () { out.followInto(Number(b.getAttribute("data-layer")), hit); });
    });
    fillPersistence(box, hit, others);
    Promise.resolve().then(function () { toTop(box); });
    return box;
  }
  function toTop(box) {  // the section (panel.js appends it last) right under the panel's title line: in sight
    var section = box.parentNode, meta = section && section.parentNode && section.parentNode.querySelector(".meta");
    if (meta && section.parentNode === meta.parentNode) meta.parentNode.insertBefore(section, meta.nextSibling);
  }
  function addToOpenPanel() {  // the panel opened before follow.js arrived: its section, added now
    var sel = state.selected, level = sel && state.cells[sel.s], body = $("panel-body");
    if (!sel || !api.panelOpen() || !level || !body || body.querySelector("#layers-panel")) return;
    var cell = level.byKey.get(sel.row * sel.s + sel.col) || null, node = panelSection({ s: sel.s, row: sel.row, col: sel.col, cell: cell });
    if (!node) return;
    var section = document.createElement("section");
    section.className = "panel-section";
    section.setAttribute("data-overlay", "layers");
    section.appendChild(node);
    body.appendChild(section);
  }

  // ------------------------------------------------------------------ the URL, the start
  function applyLevel() {  // arrived from a layer whose finest grid differs: the grid nearest the one shown there
    if (LEVEL === null || !state.openMs) return;
    var vp = api.viewer.viewport, centre = vp.getCenter(false), g = api.lod.bySize[out.levelFor(LEVEL)];
    LEVEL = null;
    vp.zoomTo(api.zoomForPx(api.lod.pxShowing(g, api.homePx())), null, true);
    vp.panTo(centre, true);
    api.updateGrid();
    api.scheduleDraw();
    api.writeUrl();
  }
  function indexLoaded(doc) {
    out.index = doc;
    out.current = doc.layers.map(function (L) { return L.layer; }).indexOf(A.layer);
    if (out.current < 0 || doc.layers.length < 2) { out.current = -1; out.wanted = null; return; }
    var asked = start.layer && start.layer !== A.layer ? doc.layers.filter(function (L) { return L.layer === start.layer; })[0] : null;
    if (asked) { location.replace(ROOT + asked.tiles + "index.html" + startHash); return; }  // the link names another layer
    buildPicker();
    setFollow(out.wanted);
    out.wanted = null;
    addToOpenPanel();
    api.writeUrl();
  }

  api.registerOverlay({
    name: "layers",
    order: 20,  // above the class heatmap, below the labels
    draw: draw,
    panelSection: panelSection,
    urlPart: function () {
      var f = out.follow || out.wanted;
      return "layer=" + encodeURIComponent(A.layer) + (f ? "&follow=" + followText(f) : "");
    },
    fromUrl: function (params) { if (registered) out.setFollow(params.follow || null); },  // a later change of the hash
    onEscape: function () {
      if (!out.follow) return false;
      out.clear();
      return true;
    }
  });
  registered = true;
  out.setFollow(start.follow || null);
  if (state.openMs) applyLevel(); else api.viewer.addOnceHandler("open", applyLevel);
  loadGlobal(A.follow_index.slice(BASE.length), "ATLAS_FOLLOW").then(indexLoaded, function (e) {
    out.errors.push(e.message + " (run `atlas follow` on the run's config)");  // not followed yet: no picker
  });
})();
