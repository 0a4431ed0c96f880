/* The atlases of one run: a switcher in the header (the main atlas and every class atlas), and in a
 * class atlas of two classes their comparison: each cell coloured by the class its activations
 * support more, a two-colour legend, and each class's strongest cells side by side (click: fly there).
 *
 * The run's index, RUN/atlases.js (window.ATLAS_INDEX: slug, title, classes, path of each finished
 * atlas's tiles folder), is loaded through the relative path atlas.json names (atlases_index:
 * ../atlases.js in the main atlas, ../../../atlases.js in RUN/classes/<slug>/tiles), so it works
 * from file:// and served alike. Switching opens the other atlas's index.html: the page's path names
 * the atlas shown (RUN/tiles/ or RUN/classes/<slug>/tiles/), and nothing else of the view is kept.
 *
 * The index also lists the views of the run's comparisons (`atlas compare`: kind "compare"); the entry of
 * the page shown (found by its folder) is atlasViewer.atlases.entry, which compare.js reads.
 *
 * Runs after viewer.js and uses its API (window.atlasViewer): one overlay ("class-compare", core.js's
 * registerOverlay: the colours on the map and each cell's two values in its click panel), loadCells,
 * flyToCell, the grids as lod.js sorts them, the colours of core.js. It tells the others the run's
 * index (api.emit("atlas-index", index); located.js listens). window.atlasViewer.atlases exposes
 * its state (for tests).
 */
(function () {
  "use strict";

  var COLOURS = ["#e66101", "#2f6fd6"];  // the two classes: orange, blue (distinct for the common colour blindnesses)
  var STRONGEST = 8;                      // cells listed per class
  var THUMB = 34;                         // icon thumbnails in the lists, px

  var A = window.ATLAS, api = window.atlasViewer;
  if (!A || !api || !api.viewer) return;
  var $ = function (id) { return document.getElementById(id); };
  var ca = A.class_atlas || null;
  var out = { index: null, current: ca ? ca.slug : null, compare: null, entry: null };
  api.atlases = out;

  var esc = api.esc, fmtInt = api.fmtInt, plural = api.plural, fmtVal = api.fmtVal;

  // ------------------------------------------------------------------ title
  if (ca) {
    var title = document.querySelector(".title"), what = ca.names.join(" vs ");
    if (title) { title.textContent = "Class atlas: " + what; title.title = title.textContent; }
    document.title = "Class atlas \u00b7 " + what + " \u00b7 " + A.model + " " + A.layer;
  }

  // ------------------------------------------------------------------ the switcher
  // an atlas tiled before the index existed (no class_atlas key) is a main atlas: its index is ../atlases.js
  var indexSrc = A.atlases_index || (A.class_atlas === undefined ? "../atlases.js" : null);
  function entryUrl(e) { return (A.atlases_root || "../") + e.path + "index.html"; }
  function entryLabel(e) {
    if (e.kind === "compare") return "Compare: " + e.title;
    return (e.slug ? (e.classes.length > 1 ? "Classes: " : "Class: ") + e.title : "Whole atlas") +
      (e.rows ? " (" + fmtInt(e.rows) + " rows)" : "");
  }
  function isHere(e) {  // whether the index entry e is the atlas this page shows (by the page's folder)
    var link = document.createElement("a");
    link.href = entryUrl(e);
    return link.pathname.replace(/index\.html$/, "") === location.pathname.replace(/index\.html$/, "");
  }
  function switchTo(slug) {  // open the atlas ``slug`` (null: the main one); false when the index has none
    var e = (out.index && out.index.atlases || []).filter(function (a) { return (a.slug || null) === slug; })[0];
    if (!e) return false;
    location.href = entryUrl(e);
    return true;
  }
  function buildSwitch(index) {
    var box = $("atlas-switch-box"), sel = $("atlas-switch"), list = index && index.atlases || [];
    if (!box || !sel || list.length < 2) return;
    sel.innerHTML = list.map(function (e, i) {
      var here = (e.slug || null) === out.current;
      return "<option value='" + i + "'" + (here ? " selected" : "") + ">" + esc(entryLabel(e)) + "</option>";
    }).join("");
    sel.title = "The atlases of this run: the whole atlas and its class atlases (`atlas class-atlas`)";
    box.hidden = false;
    sel.addEventListener("change", function () { switchTo(list[Number(sel.value)].slug || null); });
  }
  // other parts (located.js) wait for the index: api.on("atlas-index", function (index) { ... })
  function indexLoaded() { api.emit("atlas-index", out.index); }
  function loadIndex() {
    if (!indexSrc) { out.index = { atlases: [] }; indexLoaded(); return; }
    api.loadScript(indexSrc, function () {
      out.index = window.ATLAS_INDEX || null;
      out.entry = (out.index && out.index.atlases || []).filter(isHere)[0] || null;  // compare.js reads a comparison's
      if (!ca && out.entry) out.current = out.entry.slug || null;
      buildSwitch(out.index);
      indexLoaded();
    },
                   function () { out.index = { atlases: [] }; indexLoaded(); });
  }
  api.switchAtlas = switchTo;
  loadIndex();

  // ------------------------------------------------------------------ two classes compared
  if (!ca || ca.names.length !== 2) return;
  var finest = api.lod.finest;
  var cmp = { on: true, columns: [[], []], lastDraw: { cells: 0, sides: [0, 0] } };
  out.compare = cmp;

  function lead(cell) {  // {side, strength in [0, 1]} of the class the cell supports more; null when neither
    if (!cell.pair) return null;
    var a = cell.pair[0] || 0, b = cell.pair[1] || 0;
    if (a <= 0 && b <= 0) return null;
    return { side: a >= b ? 0 : 1, strength: Math.abs(a - b) / (Math.abs(a) + Math.abs(b)) };
  }
  function drawPair(ctx, v) {  // the overlay's draw: every visible cell in the colour of the class it supports more
    var n = 0, sides = [0, 0];
    if (cmp.on && v.query === null && v.level) {
      v.forEachCell(function (r, c, x, y) {
        var cell = v.level.byKey.get(r * v.s + c), l = cell && lead(cell);
        if (!l) return;
        ctx.fillStyle = api.colour.rgba(COLOURS[l.side], 0.16 + 0.36 * l.strength);
        ctx.fillRect(x, y, v.cw, v.ch);
        if (v.cw >= 8) {
          ctx.strokeStyle = COLOURS[l.side];
          ctx.lineWidth = Math.max(1, Math.min(3, v.cw / 24));
          ctx.strokeRect(x + ctx.lineWidth / 2, y + ctx.lineWidth / 2, v.cw - ctx.lineWidth, v.ch - ctx.lineWidth);
        }
        n += 1;
        sides[l.side] += 1;
      });
    }
    cmp.lastDraw = { cells: n, sides: sides };
  }
  function pairSection(hit) {  // the overlay's panelSection: the cell's mean attribution to both classes
    var pair = hit.cell && hit.cell.pair, l = hit.cell && lead(hit.cell);
    if (!pair) return null;
    return "<h3>" + esc(ca.names[0]) + " vs " + esc(ca.names[1]) + "</h3><p class='explain' id='panel-pair'>mean attribution: " +
      ca.names.map(function (name, i) {
        return "<span style='color:" + COLOURS[i] + "'>" + esc(name) + " " + esc(fmtVal(pair[i])) + "</span>";
      }).join(" \u00b7 ") + (l ? "; the cell supports " + esc(ca.names[l.side]) + " more" : "") + "</p>";
  }
  cmp.flyTo = function (s, row, col) { api.flyToCell(s, row, col); };

  function strongest(doc, side) {  // the cells whose activations support class ``side`` more, strongest first
    return doc.cells.filter(function (cell) { var l = lead(cell); return l && l.side === side; })
      .sort(function (a, b) { return b.pair[side] - a.pair[side] || a.row - b.row || a.col - b.col; })
      .slice(0, STRONGEST);
  }
  function thumbHtml(doc, cell) {
    if (!cell.icon) return "<span class='thumb'></span>";
    var cols = doc.icon_sheet_cols, slot = cell.icon[1];
    return "<span class='thumb' style=\"background-image:url('" + esc(doc.icon_url.replace("{sheet}", cell.icon[0])) +
      "');background-size:" + cols * THUMB + "px auto;background-position:-" + (slot % cols) * THUMB + "px -" +
      Math.floor(slot / cols) * THUMB + "px\"></span>";
  }
  function columnHtml(doc, side) {
    var cells = cmp.columns[side];
    var head = "<h3 style='color:" + COLOURS[side] + "'>" + esc(ca.names[side]) + "</h3>";
    if (!cells.length) return head + "<p class='none'>no cell supports it more</p>";
    return head + "<ol>" + cells.map(function (cell) {
      return "<li><button type='button' data-side='" + side + "' data-row='" + cell.row + "' data-col='" + cell.col +
        "' title='cell (" + cell.row + ", " + cell.col + ") of the " + doc.size + "\u00d7" + doc.size + " grid, " +
        plural(cell.count, "activation") + "; mean attribution: " +
        esc(ca.names[0]) + " " + fmtVal(cell.pair[0]) + ", " + esc(ca.names[1]) + " " + fmtVal(cell.pair[1]) + "'>" +
        thumbHtml(doc, cell) + "<span class='what'>(" + cell.row + ", " + cell.col + ")</span><span class='value'>" +
        fmtVal(cell.pair[side]) + "</span></button></li>";
    }).join("") + "</ol>";
  }
  function fill(level) {
    var doc = level.doc, box = $("compare");
    cmp.columns = [strongest(doc, 0), strongest(doc, 1)];
    $("compare-cols").innerHTML = "<div class='compare-col' id='compare-col-0'>" + columnHtml(doc, 0) + "</div>" +
      "<div class='compare-col' id='compare-col-1'>" + columnHtml(doc, 1) + "</div>";
    box.querySelectorAll("button[data-row]").forEach(function (b) {
      b.addEventListener("click", function () { api.flyToCell(doc.size, Number(b.getAttribute("data-row")), Number(b.getAttribute("data-col"))); });
    });
  }
  function setup() {
    var box = $("compare");
    if (!box) return;
    box.innerHTML = "<div class='compare-head'><strong>Which class does each cell support more?</strong>" +
      "<button type='button' id='compare-fold' class='legend-button' aria-expanded='true'>Hide</button></div>" +
      "<div class='compare-legend' id='compare-legend'>" + ca.names.map(function (name, i) {
        return "<span><span class='swatch' style='background:" + COLOURS[i] + "'></span>" + esc(name) + "</span>";
      }).join("") + "</div><div id='compare-body'><label class='compare-on'><input type='checkbox' id='compare-colour' checked> " +
      "colour the cells (stronger: a clearer lead in mean attribution)</label>" +
      "<div id='compare-cols' class='compare-cols'>\u2026</div>" +
      "<p class='explain'>Each class's strongest cells of the " + finest.size + "\u00d7" + finest.size +
      " grid; click one to fly there.</p></div>";
    box.hidden = false;
    $("compare-colour").addEventListener("change", function (e) { cmp.on = e.target.checked; api.scheduleDraw(); });
    $("compare-fold").addEventListener("click", function (e) {
      var body = $("compare-body"), hide = !body.hidden;
      body.hidden = hide;
      e.target.textContent = hide ? "Show" : "Hide";
      e.target.setAttribute("aria-expanded", String(!hide));
    });
    if (window.innerWidth <= 640) $("compare-fold").click();  // narrow screens: the lists folded, the legend shown
    api.registerOverlay({ name: "class-compare", draw: drawPair, panelSection: pairSection });
    api.loadCells(finest.size).then(fill, function () {});
  }
  setup();
})();
