/* The hover card (a cell's top classes under the pointer), the click panel (a cell's icon, its top
 * classes, its dataset examples with the sampled position outlined, and the overlays' sections)
 * and the clicks on cells: a click (or Enter on the keyboard cursor) goes to every overlay's onCell
 * first, then opens the cell's panel unless one of them took it. A double-click zooms only.
 */
(function (api) {
  "use strict";

  var CLICK_DELAY_MS = 320;  // a click opens the panel unless a second click makes it a double-click
  var state = api.state, A = null, card = null, panel = null, panelBody = null, clickTimer = null;

  // ------------------------------------------------------------------ hover card
  function unitText() { return A.values && A.values.unit === "logit" ? ", logit units" : ""; }
  function countText(cell) { return "average of " + api.plural(cell.count, "activation"); }
  function classesHtml(cell) {
    if (!cell.top.length) return "<div class='card-sub'>no class attribution stored</div>";
    var vmax = Math.max.apply(null, cell.top.map(function (t) { return Math.abs(t.value || 0); })) || 1;
    return "<ul class='classes'>" + cell.top.map(function (t) {
      var pct = Math.max(2, Math.round(100 * Math.abs(t.value || 0) / vmax));
      return "<li" + (t["class"] === state.query ? " class='match'" : "") + "><span class='name'>" + api.esc(t.name) +
        "</span><span class='value'>" + api.esc(api.fmtVal(t.value)) + "</span><span class='bar'><span style='width:" + pct + "%'></span></span></li>";
    }).join("") + "</ul>";
  }
  function showCard(hit, x, y) {  // the card of hit's cell next to (x, y), inside the map
    var cell = hit.cell;
    var head = A.top_kind === "labels" ? "top labels" : A.top_kind === "none" ? "" : "top classes (attribution" + unitText() + ")";
    card.innerHTML = "<div class='card-title'>" + api.esc(cell.top.length ? cell.top[0].name : "cell") + "</div>" +
      "<div class='card-sub'>" + countText(cell) + " \u00b7 cell (" + hit.row + ", " + hit.col + ") of the " + hit.s + "\u00d7" + hit.s +
      " grid" + (head ? " \u00b7 " + head : "") + "</div>" + classesHtml(cell);
    card.hidden = false;
    var vs = api.viewSize(), cw = card.offsetWidth, chh = card.offsetHeight;
    var left = x + 16 + cw > vs.w ? x - 16 - cw : x + 16, top = y + 16 + chh > vs.h ? y - 16 - chh : y + 16;
    card.style.left = Math.max(4, left) + "px";
    card.style.top = Math.max(4, top) + "px";
  }
  function hideCard() {
    if (!card.hidden) card.hidden = true;
    if (state.hover) { state.hover = null; api.scheduleDraw(); }
  }
  function onMove(ev) {
    var rect = api.$("osd").getBoundingClientRect(), x = ev.clientX - rect.left, y = ev.clientY - rect.top;
    if (ev.buttons) { hideCard(); return; }  // dragging
    var hit = api.cellAt(x, y);
    if (!hit || !hit.cell) { hideCard(); return; }
    var key = hit.s + ":" + hit.row + ":" + hit.col;
    if (!state.hover || state.hover.key !== key) { state.hover = { s: hit.s, row: hit.row, col: hit.col, key: key }; api.scheduleDraw(); }
    showCard(hit, x, y);
  }
  api.countText = countText;
  api.showCard = showCard;
  api.hideCard = hideCard;

  // ------------------------------------------------------------------ dataset examples
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
  function exampleWindow(doc) { return doc.example_window || A.example_window || 3; }
  function exampleHtml(doc, cell, i) {
    var row = cell.examples[i], box = exampleBox((cell.example_positions || [])[i], exampleWindow(doc));
    var id = (cell.example_labels || [])[i], label = id >= 0 && A.label_names ? A.label_names[id] : null;
    var rf = box ? "<span class='rf' style='top:" + (100 * box[0]).toFixed(2) + "%;left:" + (100 * box[1]).toFixed(2) +
      "%;height:" + (100 * (box[2] - box[0])).toFixed(2) + "%;width:" + (100 * (box[3] - box[1])).toFixed(2) + "%'></span>" : "";
    var caption = label ? api.esc(label) : "image " + row;
    return "<figure><div class='crop'><img loading='lazy' alt='dataset example: image row " + row + (label ? ", " + api.esc(label) : "") +
      "' title='image row " + row + "' src='" + api.esc(doc.example_url.replace("{row}", row)) + "'>" + rf +
      "</div><figcaption title='" + caption + "'>" + caption + "</figcaption></figure>";
  }
  function examplesHtml(doc, cell) {
    var html = "<h3>Dataset examples</h3><div class='examples' id='panel-examples'>";
    if (cell.examples.length) {
      html += cell.examples.map(function (row, i) { return exampleHtml(doc, cell, i); }).join("");
    } else {
      html += "<div class='none'>" + (doc.examples ? "no examples for this cell" : "examples are cropped for the finest grids only: zoom in") + "</div>";
    }
    html += "</div>";
    if (cell.examples.length) {
      html += "<p class='explain'>The activations nearest the cell's average, each cropped around where it was sampled " +
        "(" + exampleWindow(doc) + " layer cells wide); outlined: the image patch of that one position of the layer's grid.</p>";
    }
    return html;
  }

  // ------------------------------------------------------------------ the icon
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
        api.esc(api.fmtVal(cell.cossim)) + "</span>");
    }
    if (cell.rank) {
      parts.push("<span id='panel-distinctness' title='rank of this cell among all " + doc.n_icons +
        " cells of the grid by cosine to the icon's activation (1st: the icon is more this cell's than any other's)'>distinctness: this cell ranks " +
        ordinal(cell.rank) + " of " + doc.n_icons + "</span>");
    }
    return parts.length ? "<p class='quality'>" + parts.join(" \u00b7 ") + "</p>" : "";
  }
  function iconHtml(cell, doc, scale) {
    var size = doc.icon_size;
    return "<h3>Icon</h3><canvas class='icon-full' id='panel-icon' role='img' aria-label='feature visualisation of this cell' width='" +
      size * scale + "' height='" + size * scale + "'></canvas>" +
      "<p class='explain'>A picture optimised so the layer's activation of it points along the cell's average activation" +
      "; " + size + "\u00d7" + size + " px.</p>" + qualityHtml(cell, doc);
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

  // ------------------------------------------------------------------ click panel
  function panelHtml(hit, doc, scale) {
    var cell = hit.cell, s = hit.s;
    var html = "<h2>" + api.esc(cell.top.length ? cell.top[0].name : "Cell") + "</h2>" +
      "<div class='meta'>Cell (" + cell.row + ", " + cell.col + ") of the " + s + "\u00d7" + s + " grid \u00b7 " + countText(cell) +
      (cell.share !== null && cell.share !== undefined && A.top_kind !== "none" ? " \u00b7 top class " + Math.round(100 * cell.share) + "% of the positive attribution" : "") +
      "</div>";
    if (cell.icon) html += iconHtml(cell, doc, scale);
    html += "<h3>" + (A.top_kind === "labels" ? "Top labels" : "Top classes by attribution") + "</h3>" + classesHtml(cell) +
      "<p class='explain' id='panel-explain'>" + api.esc(A.values ? A.values.explain : "") + "</p>";
    return html + examplesHtml(doc, cell);
  }
  function appendSections(hit) {  // every overlay's panelSection, each in its own <section data-overlay=name>
    api.callOverlays("panelSection", [hit]).forEach(function (r) {
      if (r.value === null || r.value === undefined || r.value === "") return;
      var section = document.createElement("section");
      section.className = "panel-section";
      section.setAttribute("data-overlay", r.overlay.name);
      if (typeof r.value === "string") section.innerHTML = r.value; else section.appendChild(r.value);
      panelBody.appendChild(section);
    });
  }
  function openPanel(hit) {  // hit: {s, row, col, cell} of a non-empty cell
    var cell = hit.cell, s = hit.s, doc = state.cells[s].doc, scale = Math.max(1, Math.ceil(160 / doc.icon_size));
    panelBody.innerHTML = panelHtml(hit, doc, scale);
    appendSections(hit);
    panel.hidden = false;
    if (cell.icon) drawIcon(api.$("panel-icon"), doc, cell.icon[0], cell.icon[1], scale);
    state.selected = { s: s, row: cell.row, col: cell.col };
    hideCard();
    revealCell(s, cell.row, cell.col);
    api.scheduleDraw();
    api.writeUrl();
  }
  function revealCell(s, row, col) {  // pan the cell out from under the panel (a bottom sheet on narrow screens)
    var r = api.cellRect(s, row, col), p = api.rectOf(panel), vs = api.viewSize(), dx = 0, dy = 0;
    if (!p || !api.meets(p, r.x, r.y, r.x + r.w, r.y + r.h)) return;
    if (p.y0 > 0 && p.y0 > vs.h / 3) dy = Math.max(0, r.y + r.h - p.y0 + 12); else dx = Math.max(0, r.x + r.w - p.x0 + 12);
    if (!dx && !dy) return;
    var a = api.toWorld(0, 0), b = api.toWorld(dx, dy);
    api.viewer.viewport.panBy(new OpenSeadragon.Point(b.x - a.x, b.y - a.y));
  }
  function closePanel() {
    if (panel.hidden && !state.selected) return;
    panel.hidden = true;
    state.selected = null;
    api.scheduleDraw();
    api.writeUrl();
  }
  api.openPanel = openPanel;
  api.closePanel = closePanel;
  api.panelOpen = function () { return !panel.hidden; };

  // ------------------------------------------------------------------ clicks
  function activateCell(hit) {  // a cell clicked (or Enter on it): the overlays first, then the panel
    var taken = api.callOverlays("onCell", [hit]).some(function (r) { return r.value === true; });
    if (taken) return;
    if (hit.cell) openPanel(hit); else closePanel();
  }
  api.activateCell = activateCell;
  function onClick(e) {
    if (!e.quick) return;
    e.preventDefaultAction = true;
    var pos = e.position;
    if (clickTimer) clearTimeout(clickTimer);
    clickTimer = setTimeout(function () {  // a double-click zooms only: its clicks never open the panel
      clickTimer = null;
      var hit = api.cellAt(pos.x, pos.y);
      if (hit && !hit.loading) activateCell(hit); else closePanel();
    }, CLICK_DELAY_MS);
  }

  api.setup.panel = function (atlas) {
    var osdEl = api.$("osd");
    A = atlas;
    card = api.$("hover-card");
    panel = api.$("panel");
    panelBody = api.$("panel-body");
    api.$("panel-close").addEventListener("click", closePanel);
    osdEl.addEventListener("pointermove", onMove, true);
    osdEl.addEventListener("pointerleave", hideCard, true);
    osdEl.addEventListener("pointerdown", function () { card.hidden = true; }, true);
    api.viewer.addHandler("canvas-click", onClick);
    api.viewer.addHandler("canvas-double-click", function () {
      if (clickTimer) { clearTimeout(clickTimer); clickTimer = null; }
    });
  };
})(window.atlasViewer);
