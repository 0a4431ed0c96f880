/* The overlay canvas above the map (below the minimap): each frame clears it and draws every
 * registered overlay (core.js: atlasViewer.registerOverlay) in order. Built in: the class heatmap
 * (order 10), the cells' labels (60) and the selection / keyboard cursor / hover outlines (90).
 *
 * atlasViewer.scheduleDraw() asks for a frame (at most one per animation frame);
 * atlasViewer.redraw() draws one now. state.lastDraw counts what the last frame drew (for tests).
 */
(function (api) {
  "use strict";

  var LABEL_MIN_PX = 56;  // a cell gets its label when it is at least this wide on screen
  var FONT = "px system-ui, -apple-system, 'Segoe UI', Roboto, sans-serif";
  var state = api.state, A = null, canvas = null;

  // A canvas sized to w x h CSS px at the device's pixel ratio, cleared: its 2-D context in CSS px.
  api.fitCanvas = function (el, w, h) {
    var dpr = window.devicePixelRatio || 1;
    if (el.width !== Math.round(w * dpr) || el.height !== Math.round(h * dpr)) {
      el.width = Math.round(w * dpr);
      el.height = Math.round(h * dpr);
      el.style.width = w + "px";
      el.style.height = h + "px";
    }
    var ctx = el.getContext("2d");
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, w, h);
    return ctx;
  };
  api.rectOf = function (el) {  // an element's rectangle relative to the map, or null when hidden
    if (!el || el.hidden || el.offsetParent === null) return null;
    var a = el.getBoundingClientRect(), b = api.$("osd").getBoundingClientRect();
    return { x0: a.left - b.left, y0: a.top - b.top, x1: a.right - b.left, y1: a.bottom - b.top };
  };
  api.meets = function (r, x0, y0, x1, y1) { return !!r && x0 < r.x1 && x1 > r.x0 && y0 < r.y1 && y1 > r.y0; };

  // ------------------------------------------------------------------ one frame
  function frameView(s, level, w, h) {  // what every overlay's draw gets (core.js lists it)
    var origin = api.toScreen(0, 0), far = api.toScreen(1, 1), cw = (far.x - origin.x) / s, ch = (far.y - origin.y) / s;
    var v = {
      s: s, grid: api.lod.bySize[s], level: level, w: w, h: h, origin: origin, far: far, cw: cw, ch: ch,
      c0: Math.max(0, Math.floor(-origin.x / cw)), c1: Math.min(s - 1, Math.floor((w - origin.x) / cw)),
      r0: Math.max(0, Math.floor(-origin.y / ch)), r1: Math.min(s - 1, Math.floor((h - origin.y) / ch)),
      query: state.query, toScreen: api.toScreen
    };
    v.forEachCell = function (fn) {  // fn(row, col, x, y) for every visible cell, (x, y) its top left on screen
      for (var r = v.r0; r <= v.r1; r++) for (var c = v.c0; c <= v.c1; c++) fn(r, c, origin.x + c * cw, origin.y + r * ch);
    };
    return v;
  }
  function zoomInfo(s) {
    var g = api.lod.bySize[s], px = api.atlasPx(true);
    api.$("zoom-info").textContent = "grid " + s + "\u00d7" + s + " (" + (g.index + 1) + " of " + api.lod.grids.length +
      ") \u00b7 icons " + Math.round(100 * px / s / g.icon_size) + "% of " + g.icon_size + " px";
  }
  function drawOverlay(o, ctx, view) {  // one overlay; its failure is recorded, the others still draw
    ctx.save();
    try { o.draw(ctx, view); } catch (e) { state.errors.push("overlay " + o.name + ": " + e.message); }
    ctx.restore();
  }
  function draw() {
    var vs = api.viewSize(), ctx = api.fitCanvas(canvas, vs.w, vs.h);
    state.lastDraw = { s: null, labels: 0, heatCells: 0, heatColours: 0, labelBoxes: [] };
    if (!api.pyramidsOpen()) return;
    var s = api.currentSize(), level = state.cells[s] || null;
    zoomInfo(s);
    state.lastDraw.s = s;
    if (!level) api.loadCells(s);
    var view = frameView(s, level, vs.w, vs.h);
    api.overlays.forEach(function (o) { if (o.draw) drawOverlay(o, ctx, view); });
  }

  // ------------------------------------------------------------------ the class heatmap
  // paintHeat: dim the visible map, then colour every visible cell where values (uint8 per cell of grid
  // v.s, row-major) is positive by its value; -> {cells, colours}. The class heatmap and the unit
  // heatmap (units.js) both paint with it.
  api.paintHeat = function (ctx, v, values) {
    var colours = new Set(), cells = 0;
    ctx.fillStyle = "rgba(18, 20, 30, 0.66)";
    ctx.fillRect(v.origin.x, v.origin.y, v.far.x - v.origin.x, v.far.y - v.origin.y);
    if (!values) return { cells: 0, colours: 0 };
    v.forEachCell(function (r, c, x, y) {
      var q = values[r * v.s + c];
      if (!q) return;
      var t = q / 255, rgb = api.colour.scale(t);
      ctx.clearRect(x, y, v.cw, v.ch);
      ctx.fillStyle = api.colour.rgba(rgb, 0.38 + 0.24 * t);
      ctx.fillRect(x, y, v.cw, v.ch);
      if (v.cw >= 6) {
        ctx.strokeStyle = api.colour.css(rgb);
        ctx.lineWidth = Math.max(1, Math.min(3, v.cw / 24));
        ctx.strokeRect(x + ctx.lineWidth / 2, y + ctx.lineWidth / 2, v.cw - ctx.lineWidth, v.ch - ctx.lineWidth);
      }
      colours.add(q);
      cells += 1;
    });
    return { cells: cells, colours: colours.size };
  };
  function drawHeat(ctx, v) {  // dim the atlas, colour each cell by the searched class's value there
    if (v.query === null || !v.level) return;
    var heat = state.heat[v.s + ":" + v.query];
    if (!heat) api.loadHeat(v.s, v.query);
    var painted = api.paintHeat(ctx, v, heat ? heat.values : null);
    state.lastDraw.heatCells += painted.cells;
    if (heat) state.lastDraw.heatColours = painted.colours;
  }

  // ------------------------------------------------------------------ labels
  function fitText(ctx, text, width) {
    if (ctx.measureText(text).width <= width) return text;
    for (var n = text.length - 1; n > 2; n--) {
      var t = text.slice(0, n) + "\u2026";
      if (ctx.measureText(t).width <= width) return t;
    }
    return null;
  }
  function obstacles() {  // what labels never go under: the minimap, panel, legend, zoom buttons, zoom badge
    var nav = api.viewer.navigator ? api.viewer.navigator.element : null;
    return [nav, api.$("panel"), api.$("legend"), document.querySelector(".zoom-buttons"), api.$("zoom-info")].map(api.rectOf);
  }
  function labelBox(ctx, v, name, x, y, fs) {  // the label inside the visible part of its cell, or null when it does not fit
    var vx0 = Math.max(x, 0), vx1 = Math.min(x + v.cw, v.w), vy0 = Math.max(y, 0), vy1 = Math.min(y + v.ch, v.h);
    if (vx1 - vx0 < 44 || vy1 - vy0 < fs + 10) return null;
    var text = fitText(ctx, name, Math.min(vx1 - vx0, v.cw) - 10);
    if (!text || (text !== name && vx1 - vx0 < v.cw - 1)) return null;  // cut by the edge and shortened: none
    var tw = ctx.measureText(text).width, bx = (vx0 + vx1 - tw) / 2 - 4, by = vy1 - fs - 10;
    return { text: text, x0: bx, y0: by, x1: bx + tw + 8, y1: by + fs + 6 };
  }
  function drawLabels(ctx, v) {  // the top class, inside the visible part of each cell, never under the minimap or panel
    if (!v.level || v.cw < LABEL_MIN_PX) return;
    var avoid = obstacles(), fs = Math.max(10, Math.min(14, Math.floor(v.cw / 8))), minShare = A.label_min_share || 0;
    ctx.font = "600 " + fs + FONT;
    ctx.textBaseline = "middle";
    v.forEachCell(function (r, c, x, y) {
      var cell = v.level.byKey.get(r * v.s + c);
      if (!cell || !cell.top.length || (minShare > 0 && !(cell.share >= minShare))) return;
      var b = labelBox(ctx, v, cell.top[0].name, x, y, fs);
      if (!b || avoid.some(function (o) { return api.meets(o, b.x0, b.y0, b.x1, b.y1); })) return;
      ctx.fillStyle = "rgba(255, 255, 255, 0.86)";
      ctx.fillRect(b.x0, b.y0, b.x1 - b.x0, b.y1 - b.y0);
      ctx.fillStyle = "#1d1d24";
      ctx.fillText(b.text, b.x0 + 4, b.y0 + (fs + 6) / 2);
      state.lastDraw.labels += 1;
      state.lastDraw.labelBoxes.push([r, c, b.x0, b.y0, b.x1, b.y1]);
    });
  }

  // ------------------------------------------------------------------ outlines
  function drawOutlines(ctx, v) {  // the selected cell, the keyboard cursor, the hovered cell
    if (!v.level) return;
    [[state.selected, "#2f55d4", 3, null], [state.cursor, "#ff9f1a", 3, [6, 4]], [state.hover, "rgba(20, 20, 30, 0.85)", 2, null]]
      .forEach(function (item) {
        var sel = item[0];
        if (!sel || sel.s !== v.s) return;
        ctx.save();
        ctx.strokeStyle = item[1];
        ctx.lineWidth = item[2];
        if (item[3]) ctx.setLineDash(item[3]);
        ctx.strokeRect(v.origin.x + sel.col * v.cw + 1.5, v.origin.y + sel.row * v.ch + 1.5, v.cw - 3, v.ch - 3);
        ctx.restore();
      });
  }

  api.setup.overlay = function (atlas) {
    A = atlas;
    canvas = api.$("overlay");
    api.viewer.canvas.appendChild(canvas);  // above the image, below the minimap
    api.redraw = draw;
    api.scheduleDraw = api.frame(draw);
    api.registerOverlay({ name: "heatmap", order: 10, draw: drawHeat });
    api.registerOverlay({ name: "labels", order: 60, draw: drawLabels });
    api.registerOverlay({ name: "outlines", order: 90, draw: drawOutlines });
  };
})(window.atlasViewer);
