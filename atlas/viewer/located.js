/* Located images on the atlas (`atlas locate`): where every position of one image lands.
 *
 * A "Located" list in the header of the main atlas, filled from ../locate/index.js (window.ATLAS_LOCATED,
 * written by `atlas locate` into RUN/locate/), loaded once the run's index (atlases.js, which counts
 * the located images) says there is one; until then the list stays hidden.
 * Choosing an image loads ../locate/<unit>/points.js (window.ATLAS_LOCATED_POINTS): its layer
 * positions are drawn as dots at their atlas points (x, y in the [0, 1] square the OpenSeadragon
 * world spans, as the cells are), each in its cell's colour, the colours of its overlay.png; a card
 * shows overlay.png and activation-grid.png (and, told by the event "located-card", units.js adds the
 * image's semantic dictionary picture after `atlas units`). The choice is kept in the URL as located=<unit>.
 *
 * One overlay ("located", core.js's registerOverlay): the dots (draw, above the labels), the URL
 * (urlPart, fromUrl) and Esc (onEscape: hides the image).
 */
(function () {
  "use strict";

  var api = window.atlasViewer;
  if (!api || !api.viewer || !window.OpenSeadragon) return;  // the viewer did not start (its message says why)
  var BASE = "../locate/";
  var state = { index: null, unit: null, points: null, errors: [], drawn: 0, loads: 0 };
  api.located = state;

  var CSS = [
    ".located-pick { display: flex; align-items: center; gap: 6px; color: #cfd4e3; font-size: 13px; white-space: nowrap; }",
    ".located-pick[hidden] { display: none; }",
    ".located-pick select { max-width: 180px; padding: 4px 6px; border-radius: 6px; border: 1px solid #50586f; background: #2b3142; color: #fff; font: inherit; }",
    ".located-card { position: absolute; z-index: 8; top: 10px; left: 54px; width: 272px; max-height: calc(100% - 60px); overflow-y: auto;",
    "  padding: 8px 10px 10px; background: rgba(255, 255, 255, .97); border: 1px solid #c9ccd6; border-radius: 8px; box-shadow: 0 4px 16px rgba(0, 0, 0, .18); font-size: 12px; }",
    ".located-card[hidden] { display: none; }",
    ".located-card h2 { font-size: 13px; margin: 0 22px 2px 0; overflow: hidden; text-overflow: ellipsis; white-space: nowrap; }",
    ".located-card .meta { color: #5a6072; margin-bottom: 6px; }",
    ".located-card img { display: block; width: 100%; height: auto; margin-top: 6px; border: 1px solid #d4d6de; image-rendering: auto; }",
    ".located-card .close { position: absolute; top: 4px; right: 6px; border: 0; background: none; font-size: 18px; cursor: pointer; color: #5a6072; }",
    "@media (max-width: 640px) { .located-pick select { max-width: 110px; } .located-card { width: 180px; } }"
  ].join("\n");
  var style = document.createElement("style");
  style.textContent = CSS;
  document.head.appendChild(style);

  // ------------------------------------------------------------------ elements
  var pick = document.createElement("label");
  pick.className = "located-pick";
  pick.hidden = true;
  pick.title = "Images placed on the atlas with `atlas locate`: show where each position of one lands";
  pick.innerHTML = "Located <select id='located-select' aria-label='Show where a located image lands'><option value=''>none</option></select>";
  var header = document.querySelector(".header"), share = document.getElementById("share");
  header.insertBefore(pick, share);
  var select = pick.querySelector("select");

  var card = document.createElement("aside");
  card.className = "located-card";
  card.id = "located-card";
  card.hidden = true;
  card.setAttribute("aria-label", "Located image");
  document.getElementById("main").appendChild(card);

  var esc = api.esc, loadScript = api.loadScript;

  // ------------------------------------------------------------------ dots
  function draw(ctx, view) {  // the overlay's draw: every position of the image at its atlas point
    state.drawn = 0;
    if (!state.points) return;
    var pts = state.points.points, r = 5, w = view.w, h = view.h;
    for (var i = 0; i < pts.length; i++) {
      var p = view.toScreen(pts[i][0], pts[i][1]);
      if (p.x < -r || p.y < -r || p.x > w + r || p.y > h + r) continue;
      ctx.beginPath();
      ctx.arc(p.x, p.y, r, 0, 2 * Math.PI);
      ctx.fillStyle = pts[i][2];
      ctx.fill();
      ctx.lineWidth = 1.5;
      ctx.strokeStyle = "rgba(15, 15, 25, 0.9)";
      ctx.stroke();
      state.drawn += 1;
    }
  }

  // ------------------------------------------------------------------ card
  function showCard(doc) {
    var entry = (state.index.images || []).filter(function (d) { return d.unit === doc.unit; })[0] || {};
    var cells = entry.cells_hit ? entry.cells_hit[String(doc.level)] : null;
    card.innerHTML = "<button type='button' class='close' title='Hide (Esc)' aria-label='Hide the located image'>&times;</button>" +
      "<h2 title='" + esc(entry.source || doc.name) + "'>" + esc(doc.name) + "</h2>" +
      "<div class='meta'>" + doc.grid[0] + "\u00d7" + doc.grid[1] + " positions" +
      (cells !== null && cells !== undefined ? " in " + cells + " cell" + (cells === 1 ? "" : "s") : "") +
      " of the " + doc.level + "\u00d7" + doc.level + " grid" +
      (doc.top_classes && doc.top_classes.length ? " \u00b7 the network says " + esc(doc.top_classes.slice(0, 3).join(", ")) : "") + "</div>" +
      "<img alt='the image, each position tinted by the colour of its cell' src='" + esc(BASE + doc.overlay) + "'>" +
      "<img alt='the activation grid: each position shown by its cell&#39;s icon' src='" + esc(BASE + doc.activation_grid) + "'>";
    card.querySelector(".close").addEventListener("click", function () { choose(null); });
    card.hidden = false;
    api.emit("located-card", { unit: doc.unit, card: card });  // units.js adds the image's dictionary picture
  }

  // ------------------------------------------------------------------ choosing
  function choose(unit) {
    if (!state.index) { state.unit = unit || null; return; }  // the list is loading: chosen once it is there
    if (!unit || !state.index.images.some(function (d) { return d.unit === unit; })) unit = null;
    state.unit = unit;
    select.value = unit || "";
    if (!unit) {
      state.points = null;
      card.hidden = true;
      api.scheduleDraw();
      if (api.writeUrl) api.writeUrl();
      return;
    }
    loadScript(BASE + unit + "/points.js", function () {
      var doc = window.ATLAS_LOCATED_POINTS;
      delete window.ATLAS_LOCATED_POINTS;
      if (!doc || doc.unit !== unit || state.unit !== unit) return;
      state.points = doc;
      state.loads += 1;
      showCard(doc);
      api.scheduleDraw();
      if (api.writeUrl) api.writeUrl();
    }, function () { state.errors.push("cannot load " + BASE + unit + "/points.js"); });
  }
  api.chooseLocated = choose;
  select.addEventListener("change", function () { choose(select.value || null); });

  // ------------------------------------------------------------------ the overlay
  function fromUrl(params) {  // at registration: kept (the URL is rewritten on open) until the list has loaded
    var unit = params.located || null;
    if (unit !== state.unit || (unit && !state.points)) choose(unit);
  }
  api.registerOverlay({
    name: "located",
    order: 70,  // above the labels
    draw: draw,
    urlPart: function () { return state.unit ? "located=" + encodeURIComponent(state.unit) : null; },
    fromUrl: fromUrl,
    onEscape: function () {
      if (!state.unit) return false;
      choose(null);
      return true;
    }
  });

  // ------------------------------------------------------------------ the list
  // Located images belong to the main atlas (placed by its layout). The run's index (atlases.js)
  // counts them, so the list is asked for only when there is one (no failed request otherwise).
  if (window.ATLAS && window.ATLAS.class_atlas) { state.unit = null; return; }
  api.on("atlas-index", function (index) {  // atlases.js tells
    if (index && index.located) loadList(); else state.unit = null;
  });
  function loadList() { loadScript(BASE + "index.js", function () {
    var doc = window.ATLAS_LOCATED;
    delete window.ATLAS_LOCATED;
    if (!doc || !doc.images || !doc.images.length) { state.unit = null; return; }
    state.index = doc;
    doc.images.forEach(function (d) {
      var opt = document.createElement("option");
      opt.value = d.unit;
      opt.textContent = d.name + (d.top_class ? " (" + d.top_class + ")" : "");
      select.appendChild(opt);
    });
    pick.hidden = false;
    choose(state.unit);
  }, function () { state.unit = null; /* nothing located yet: the list stays hidden */ }); }
})();
