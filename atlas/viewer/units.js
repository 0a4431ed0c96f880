/* The units behind the cells (`atlas units`): each cell's dictionary in its click panel, a unit's card
 * (icon, self-rank, dataset examples) with its heatmap over the atlas, units found by index in the search
 * box, and a located image's semantic dictionary picture.
 *
 * Data, from ../units/ (RUN/units, written by `atlas units`), loaded with script tags (file:// works):
 *   index.js         window.ATLAS_UNITS: the basis, its units' self-ranks and spreads, file patterns;
 *                    asked for only when the run's index (atlases.js) counts this atlas's units
 *   cells-<s>.js     window.ATLAS_UNITS_CELLS_<s>: each cell's top units by share (of its activation, and
 *                    of its top class's attribution), loaded when a cell of grid s is first clicked
 *   unit/<u>.js      window.ATLAS_UNITS_UNIT_<u>: unit u's mean over the cells of every grid (uint8, base64,
 *                    dense or sparse, as the class heat files) and its examples; loaded when u is shown
 *   icons/<u>.jpg, examples/<row>.jpg, located/<unit>/dictionary.png
 *
 * One overlay ("units", core.js's registerOverlay, registered once the index has loaded, so an atlas
 * without units has none): the shown unit's heatmap on the grid on screen
 * (draw; hidden while a class is searched), the click panel's section (panelSection), the URL
 * (urlPart: channel=<u>, or unit=<u> for a learned basis; fromUrl) and Esc (onEscape). The search box
 * gets a provider (search.js's addSearchProvider): "#c17", "c17", "channel 17", "#u17", "unit 17".
 */
(function () {
  "use strict";

  var api = window.atlasViewer;
  if (!api || !api.viewer || !window.OpenSeadragon) return;  // the viewer did not start (its message says why)
  var A = window.ATLAS, BASE = "../units/", NARROW = 640;
  var state = { index: null, unit: null, data: {}, cells: {}, loading: {}, errors: [], drawn: 0, loads: 0, ms: {}, asked: null, legendFor: null };
  api.units = state;
  var esc = api.esc;

  var CSS = [
    ".units-section h3 { display: flex; justify-content: space-between; gap: 6px; }",
    ".units-list { list-style: none; margin: 0; padding: 0; }",
    ".units-list button { display: grid; grid-template-columns: 34px 1fr auto; align-items: center; gap: 8px; width: 100%; margin: 0 0 3px;",
    "  padding: 2px; border: 1px solid transparent; border-radius: 5px; background: none; cursor: pointer; text-align: left; font: inherit; font-size: 12px; }",
    ".units-list button:hover, .units-list button:focus { border-color: #c3c7d3; background: #f4f5f9; }",
    ".units-list img, .units-list .noicon { width: 34px; height: 34px; border-radius: 3px; background: #eceef3; image-rendering: auto; }",
    ".units-list .units-share { font-variant-numeric: tabular-nums; color: #30343f; }",
    ".units-list .bar { grid-column: 2 / 4; height: 3px; background: #e4e6ee; border-radius: 2px; margin-top: -3px; }",
    ".units-list .bar span { display: block; height: 100%; background: #4a6fd8; border-radius: 2px; }",
    ".unit-card { position: absolute; z-index: 8; top: 10px; left: 54px; width: 300px; max-height: calc(100% - 60px); overflow-y: auto;",
    "  padding: 8px 10px 10px; background: rgba(255, 255, 255, .97); border: 1px solid #c9ccd6; border-radius: 8px; box-shadow: 0 4px 16px rgba(0, 0, 0, .18); font-size: 12px; }",
    ".unit-card[hidden] { display: none; }",
    ".unit-card.beside { left: 336px; }",
    ".unit-card h2 { font-size: 13px; margin: 0 22px 2px 0; }",
    ".unit-card .meta { color: #5a6072; margin-bottom: 4px; }",
    ".unit-card .close { position: absolute; top: 4px; right: 6px; border: 0; background: none; font-size: 18px; cursor: pointer; color: #5a6072; }",
    ".unit-card .unit-icon { display: block; width: 128px; height: 128px; image-rendering: pixelated; border: 1px solid #d4d6de; margin: 4px 0; }",
    ".unit-card .legend-bar { margin-top: 6px; }",
    ".unit-card .examples { margin-top: 6px; }",
    "@media (max-width: 640px) { .unit-card, .unit-card.beside { left: 8px; right: 8px; width: auto; max-height: 44%; }",
    "  .unit-card .unit-icon { width: 72px; height: 72px; float: right; margin: 0 0 4px 6px; } }"
  ].join("\n");
  var style = document.createElement("style");
  style.textContent = CSS;
  document.head.appendChild(style);

  var card = document.createElement("aside");
  card.className = "unit-card";
  card.id = "unit-card";
  card.hidden = true;
  card.setAttribute("aria-label", "Unit");
  document.getElementById("main").appendChild(card);

  // ------------------------------------------------------------------ data
  function load(src, name, done) {  // a .js file of ../units/ defining window[name]: done(doc) once
    state.loading[src] = true;
    api.loadScript(BASE + src, function () {
      var doc = window[name];
      delete window[name];
      delete state.loading[src];
      if (doc) done(doc); else state.errors.push(src + " did not define " + name);
    }, function () { delete state.loading[src]; state.errors.push("cannot load " + BASE + src); });
  }
  function b64bytes(text) {
    var bin = atob(text), out = new Uint8Array(bin.length);
    for (var i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
    return out;
  }
  function decodeHeat(h) {  // {size, max, min, cells, values: Uint8Array [size * size]} (tile's heat encoding)
    var values = new Uint8Array(h.size * h.size), v = b64bytes(h.values);
    if (h.encoding === "sparse") {
      var dv = new DataView(b64bytes(h.index).buffer);
      for (var i = 0; i < v.length; i++) values[dv.getUint32(4 * i, true)] = v[i];
    } else {
      values.set(v);
    }
    return { size: h.size, max: h.max, min: h.min, cells: h.cells, values: values };
  }
  function loadUnit(u, done) {
    if (state.data[u]) { done(state.data[u]); return; }
    var t0 = performance.now();
    load(state.index.unit_url.replace("{unit}", u), "ATLAS_UNITS_UNIT_" + u, function (doc) {
      Object.keys(doc.levels).forEach(function (s) { doc.levels[s] = decodeHeat(doc.levels[s]); });
      state.data[u] = doc;
      state.ms[u] = performance.now() - t0;
      state.loads += 1;
      done(doc);
    });
  }
  function loadCells(s, done) {
    if (state.cells[s]) { done(state.cells[s]); return; }
    load(state.index.cells_url.replace("{size}", s), "ATLAS_UNITS_CELLS_" + s, function (doc) {
      var byKey = new Map();
      doc.cells.forEach(function (c) { byKey.set(c[0] * doc.size + c[1], c); });
      state.cells[s] = { doc: doc, byKey: byKey };
      done(state.cells[s]);
    });
  }

  // ------------------------------------------------------------------ names
  function tag(u) { return (state.index.kind === "channels" ? "#c" : "#u") + u; }
  function unitName(u) { return state.index.title + " " + u; }
  function iconUrl(u) { return BASE + state.index.icon_url.replace("{unit}", u); }
  function hasIcon(u) { return u < state.index.n_icons; }
  function ordinal(n) {
    var t = n % 100, r = n % 10;
    return n + (t >= 11 && t <= 13 ? "th" : r === 1 ? "st" : r === 2 ? "nd" : r === 3 ? "rd" : "th");
  }
  api.unitName = function (u) { return state.index ? unitName(u) : null; };

  // ------------------------------------------------------------------ the click panel's section
  function rowsHtml(units, shares) {
    var top = shares.length ? shares[0] : 1;
    return "<ul class='units-list'>" + units.map(function (u, i) {
      var img = hasIcon(u) ? "<img loading='lazy' alt='' src='" + esc(iconUrl(u)) + "'>" : "<span class='noicon'></span>";
      return "<li><button type='button' data-unit='" + u + "' title='Show " + esc(unitName(u)) + ": its icon, examples and heatmap'>" +
        img + "<span>" + esc(tag(u)) + " " + esc(unitName(u)) + "</span><span class='units-share'>" + (100 * shares[i]).toFixed(1) + "%</span>" +
        "<span class='bar'><span style='width:" + Math.max(2, Math.round(100 * shares[i] / top)) + "%'></span></span></button></li>";
    }).join("") + "</ul>";
  }
  function sectionHtml(entry) {
    var t = state.index.title, html = "<h3>Top " + esc(t) + "s <span>share</span></h3>";
    if (!entry || !entry[2].length) return html + "<p class='explain'>No " + esc(t) + " is positive in this cell.</p>";
    html += rowsHtml(entry[2], entry[3]) + "<p class='explain'>Each " + esc(t) + "'s share of the cell's positive mean " +
      (state.index.kind === "channels" ? "activation" : "coefficients") + " (" + esc(state.index.basis) + "). Click one for its icon, examples and heatmap.</p>";
    if (entry.length > 4 && entry[4].length) {
      var cls = entry[6] >= 0 && A.class_names ? A.class_names[entry[6]] : "its top class";
      html += "<h3>By attribution to " + esc(cls) + "</h3>" + rowsHtml(entry[4], entry[5]) +
        "<p class='explain'>Each " + esc(t) + "'s share of the attribution to " + esc(cls) + " of the cell's first dataset examples.</p>";
    }
    return html;
  }
  function panelSection(hit) {  // a placeholder filled once the grid's dictionaries have loaded
    if (!state.index || !hit.cell) return null;
    var div = document.createElement("div");
    div.className = "units-section";
    div.id = "units-section";
    div.innerHTML = "<h3>Top " + esc(state.index.title) + "s</h3><p class='explain'>\u2026</p>";
    loadCells(hit.s, function (level) {
      div.innerHTML = sectionHtml(level.byKey.get(hit.row * hit.s + hit.col));
      div.setAttribute("data-loaded", "1");
    });
    div.addEventListener("click", function (e) {
      var b = e.target.closest("button[data-unit]");
      if (b) showUnit(Number(b.getAttribute("data-unit")));
    });
    return div;
  }

  // ------------------------------------------------------------------ the unit's card
  function exampleHtml(ex) {  // ex: [row, y, x, label, value]
    var box = api.exampleBox([ex[1], ex[2]], state.index.example_window), lab = labelName(ex[3]);
    var rf = box ? "<span class='rf' style='top:" + (100 * box[0]).toFixed(2) + "%;left:" + (100 * box[1]).toFixed(2) +
      "%;height:" + (100 * (box[2] - box[0])).toFixed(2) + "%;width:" + (100 * (box[3] - box[1])).toFixed(2) + "%'></span>" : "";
    var caption = lab || "image " + ex[0];
    return "<figure><div class='crop'><img loading='lazy' alt='dataset example: image row " + ex[0] + "' src='" +
      esc(BASE + state.index.example_url.replace("{row}", ex[0])) + "'>" + rf + "</div><figcaption title='" + esc(caption) +
      " (" + api.fmtVal(ex[4]) + ")'>" + esc(caption) + "</figcaption></figure>";
  }
  function labelName(id) {
    if (id === null || id < 0) return null;
    var names = state.index.label_kind === "classes" ? A.class_names : A.label_names;
    return names && names[id] !== undefined ? String(names[id]) : null;
  }
  function rankHtml(doc) {
    if (!doc.rank) return "<p class='explain'>No icon: only the first " + state.index.n_icons + " " + esc(state.index.title) + "s were rendered (units.limit).</p>";
    return "<p class='quality' id='unit-rank' title='rank of this " + esc(state.index.title) + " among all " + state.index.n_units +
      " by how much the icon raises each, scaled by how much each varies over the dataset (1st: the icon is its own)'>self-rank: " +
      ordinal(doc.rank) + " of " + state.index.n_units + "</p>";
  }
  function cardHtml(u, doc) {
    var t = state.index.title;
    return "<button type='button' class='close' title='Hide (Esc)' aria-label='Hide the " + esc(t) + "'>&times;</button>" +
      "<h2>" + esc(tag(u)) + " \u00b7 " + esc(unitName(u)) + "</h2>" +
      "<div class='meta'>" + esc(state.index.basis) + " of layer " + esc(state.index.layer) + " \u00b7 positive in " +
      Math.round(100 * (doc.active || 0)) + "% of the images \u00b7 spread " + api.fmtVal(doc.std) + "</div>" +
      (hasIcon(u) ? "<img class='unit-icon' id='unit-icon' alt='feature visualisation of " + esc(unitName(u)) + "' src='" + esc(iconUrl(u)) + "'>" : "") +
      rankHtml(doc) +
      "<div class='legend-bar' id='unit-legend-bar'></div><div class='legend-scale'><span>0</span><span id='unit-legend-what'></span>" +
      "<span id='unit-legend-max'></span></div>" +
      "<p class='explain' id='unit-legend-note'></p>" +
      "<h3>Where it is strongest</h3><div class='examples' id='unit-examples'>" + doc.examples.map(exampleHtml).join("") + "</div>" +
      "<p class='explain'>The collected images where this " + esc(t) + " is largest; outlined: the sampled position's patch.</p>";
  }
  function renderCard(u, doc) {
    card.innerHTML = cardHtml(u, doc);
    card.querySelector(".close").addEventListener("click", function () { showUnit(null); });
    card.querySelector("#unit-legend-bar").style.background = "linear-gradient(to right, " + api.colour.VIRIDIS.join(", ") + ")";
    var located = document.getElementById("located-card");
    card.classList.toggle("beside", !!(located && !located.hidden));
    card.hidden = false;
    updateLegend();
  }
  function updateLegend() {  // the legend of the grid on screen
    var doc = state.unit === null ? null : state.data[state.unit], s = api.currentSize();
    if (!doc || card.hidden) return;
    var h = doc.levels[s], what = document.getElementById("unit-legend-what"), note = document.getElementById("unit-legend-note");
    if (!h || !what) return;
    document.getElementById("unit-legend-max").textContent = api.fmtVal(h.max);
    what.textContent = "mean " + (state.index.kind === "channels" ? "activation" : "coefficient");
    note.textContent = (api.state.query !== null ? "Hidden while a class is searched: clear the search to see it. " : "") +
      "Heatmap on the " + s + "\u00d7" + s + " grid: " + api.plural(h.cells, "cell") + " where it is positive on average" +
      (h.min !== null && h.min < 0 ? " (lowest mean " + api.fmtVal(h.min) + ", not coloured)" : "") + ".";
  }
  function showUnit(u) {  // show unit u (null: none); its data load first
    if (u !== null && (!state.index || !(u >= 0 && u < state.index.n_units))) u = null;
    state.unit = u;
    if (u === null) { card.hidden = true; api.scheduleDraw(); api.writeUrl(); return; }
    if (window.innerWidth <= NARROW && api.panelOpen()) api.closePanel();  // the map stays visible under the card
    loadUnit(u, function (doc) {
      if (state.unit !== u) return;
      renderCard(u, doc);
      api.scheduleDraw();
      api.writeUrl();
    });
  }
  api.showUnit = showUnit;

  // ------------------------------------------------------------------ the heatmap
  function draw(ctx, v) {
    state.drawn = 0;
    var doc = state.unit === null ? null : state.data[state.unit], key = v.s + ":" + v.query;
    if (doc && state.legendFor !== key) { state.legendFor = key; updateLegend(); }  // another grid, or a class searched
    if (!doc || v.query !== null || !doc.levels[v.s]) return;
    state.drawn = api.paintHeat(ctx, v, doc.levels[v.s].values).cells;
  }

  // ------------------------------------------------------------------ search: units by index
  var PATTERN = /^\s*(?:#?([cu])\s*(\d+)|(channel|unit|feature|group|neuron group)\s+#?(\d+))\s*$/i;
  function findUnits(text) {
    if (!state.index) return [];
    var m = PATTERN.exec(text);
    if (!m) return [];
    var u = Number(m[2] !== undefined ? m[2] : m[4]);
    if (!(u >= 0 && u < state.index.n_units)) return [];
    var doc = state.index, rank = hasIcon(u) ? doc.ranks[u] : null;
    return [{ label: tag(u) + " " + unitName(u), detail: rank ? "self-rank " + ordinal(rank) : doc.basis, pick: function () { showUnit(u); } }];
  }

  // ------------------------------------------------------------------ located images: the dictionary picture
  function addPicture(event) {
    var pic = event && state.index && state.index.located ? state.index.located[event.unit] : null;
    if (!pic || !event.card || event.card.querySelector(".units-dictionary")) return;
    var img = document.createElement("img");
    img.className = "units-dictionary";
    img.alt = "the semantic dictionary: each position drawn as the icon of its strongest " + state.index.title;
    img.title = "Each position drawn as the icon of its strongest " + state.index.title + " (`atlas units`, " + state.index.basis + ")";
    img.src = BASE + pic;
    event.card.appendChild(img);
  }

  // ------------------------------------------------------------------ the overlay and the start
  function askedIn(params) {  // the unit a URL names (channel=17 or unit=17), or null
    var text = params.channel !== undefined ? params.channel : params.unit;
    return text === undefined || !/^\d+$/.test(text) ? null : Number(text);
  }
  state.asked = askedIn(api.urlParams ? api.urlParams() : {});  // kept: the URL is rewritten before the index comes
  function fromUrl(params) {
    var u = askedIn(params);
    if (u !== state.unit) showUnit(u);
  }
  function register() {  // only in an atlas with units: others see no overlay of ours
    api.registerOverlay({
      name: "units",
      order: 20,  // above the class heatmap, below the labels
      draw: draw,
      panelSection: panelSection,
      urlPart: function () { return state.unit === null ? null : (state.index.kind === "channels" ? "channel=" : "unit=") + state.unit; },
      fromUrl: fromUrl,
      onEscape: function () {
        if (state.unit === null) return false;
        showUnit(null);
        return true;
      }
    });
  }

  function isHere(e) {  // whether the run index's entry e is the atlas this page shows (by the page's folder)
    var link = document.createElement("a");
    link.href = (A.atlases_root || "../") + e.path + "index.html";
    return link.pathname.replace(/index\.html$/, "") === location.pathname.replace(/index\.html$/, "");
  }
  function started(doc) {
    state.index = doc;
    var asked = state.asked;
    register();
    var input = document.getElementById("search-input");
    if (api.addSearchProvider) api.addSearchProvider(findUnits);
    if (input) input.placeholder = input.disabled ? "Search #c17\u2026" : "Search a class or #c17\u2026";
    if (input) input.disabled = false;
    api.on("located-card", addPicture);  // located.js tells; a card shown before the index came hears it now
    if (asked !== null && state.unit === null) showUnit(asked);
  }
  api.on("atlas-index", function (index) {  // atlases.js tells; units only where this atlas's entry counts some
    var here = (index && index.atlases || []).filter(isHere)[0];
    if (here && here.units && !state.index) load("index.js", "ATLAS_UNITS", started);
  });
})();
