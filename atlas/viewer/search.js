/* The class search: a combobox listing every class whose name holds the text (best first, with its
 * cell counts on the shown grid), the chosen class's heatmap (the built-in "heatmap" overlay draws
 * it) with a legend, and zoom to the cells where it is strongest. Other parts add matches of their
 * own, listed first: atlasViewer.addSearchProvider(fn), fn(text) -> [{label, detail, pick()}]
 * (units.js: a unit by its index, "#c17").
 */
(function (api) {
  "use strict";

  var LIST_MAX = 60;
  var state = api.state, A = null, input = null, list = null, status = null, legend = null;
  var activeOption = -1, shown = [], providers = [];

  function className(k) { return A.class_names[k] !== undefined ? String(A.class_names[k]) : String(k); }
  function matches(text) {  // every class whose name contains the text, best first
    var q = text.trim().toLowerCase(), s = api.currentSize(), out = [];
    if (!q) return [];
    A.search_classes.forEach(function (k) {
      var name = className(k), low = name.toLowerCase(), at = low.indexOf(q);
      if (at < 0) return;
      out.push({ k: k, name: name, at: at, rank: low === q ? 0 : at === 0 ? 1 : 2, cells: api.classCells(s, k), top: api.classTop(s, k) });
    });
    out.sort(function (a, b) { return a.rank - b.rank || b.top - a.top || b.cells - a.cells || (a.name < b.name ? -1 : a.name > b.name ? 1 : 0); });
    return out;
  }
  api.className = className;
  api.matches = matches;
  function extraMatches(text) {  // the providers' matches of the text, in their order
    return providers.reduce(function (out, fn) { return out.concat(fn(text) || []); }, []);
  }
  api.addSearchProvider = function (fn) { providers.push(fn); };

  // ------------------------------------------------------------------ the list
  function optionHtml(m, i, n) {  // n: the typed text's length
    if (m.pick) {
      return "<li role='option' id='search-opt-" + i + "' data-x='" + i + "' aria-selected='" + (i === activeOption) + "'><span>" +
        api.esc(m.label) + "</span><span class='count'>" + api.esc(m.detail || "") + "</span></li>";
    }
    var name = api.esc(m.name.slice(0, m.at)) + "<mark>" + api.esc(m.name.slice(m.at, m.at + n)) + "</mark>" + api.esc(m.name.slice(m.at + n));
    return "<li role='option' id='search-opt-" + i + "' data-k='" + m.k + "' aria-selected='" + (i === activeOption) + "'><span>" + name +
      "</span><span class='count'>" + (m.top ? "top in " + m.top + " \u00b7 " : "") + api.plural(m.cells, "cell") + "</span></li>";
  }
  function renderList(text) {
    shown = extraMatches(text).concat(matches(text));
    activeOption = shown.length ? 0 : -1;
    var s = api.currentSize(), typed = text.trim(), html;
    if (!typed) { closeList(); return; }
    if (!shown.length) {
      html = "<li class='none' role='option' aria-disabled='true'>no class matches \u201c" + api.esc(typed) + "\u201d</li>";
    } else {
      html = shown.slice(0, LIST_MAX).map(function (m, i) { return optionHtml(m, i, typed.length); }).join("");
      if (shown.length > LIST_MAX) html += "<li class='none' role='option' aria-disabled='true'>and " + (shown.length - LIST_MAX) + " more: type more of the name</li>";
    }
    list.innerHTML = html;
    list.hidden = false;
    input.setAttribute("aria-expanded", "true");
    list.setAttribute("aria-label", shown.length + " classes match (cells of the " + s + "\u00d7" + s + " grid)");
    setActive(activeOption);
  }
  function setActive(i) {
    activeOption = i;
    Array.prototype.forEach.call(list.querySelectorAll("li[data-k], li[data-x]"), function (li, j) { li.setAttribute("aria-selected", String(j === i)); });
    if (i >= 0 && api.$("search-opt-" + i)) {
      input.setAttribute("aria-activedescendant", "search-opt-" + i);
      api.$("search-opt-" + i).scrollIntoView({ block: "nearest" });
    } else {
      input.removeAttribute("aria-activedescendant");
    }
  }
  function closeList() {
    list.hidden = true;
    input.setAttribute("aria-expanded", "false");
    input.removeAttribute("aria-activedescendant");
  }

  // ------------------------------------------------------------------ choosing a class
  function pick(k) {
    state.query = k;
    input.value = className(k);
    closeList();
    api.loadHeat(api.currentSize(), k);
    updateStatus();
    api.scheduleDraw();
    api.writeUrl();
    return k;
  }
  function choose(m) {  // a listed match: a provider's (its pick, in place of the class shown) or a class
    if (!m.pick) return pick(m.k);
    closeList();
    if (state.query !== null) { state.query = null; updateStatus(); }
    input.value = m.label;
    m.pick();
    return null;
  }
  function search(text) {  // the best match of the text (as Enter in the box); -1 when none
    var m = matches(text), extra = extraMatches(text);
    if (!text.trim()) { clearSearch(); return null; }
    if (extra.length) return choose(extra[0]);
    if (!m.length) { state.query = null; updateStatus(); status.textContent = "no class matches \u201c" + text.trim() + "\u201d"; return -1; }
    return pick(m[0].k);
  }
  function clearSearch() {
    state.query = null;
    input.value = "";
    closeList();
    updateStatus();
    api.scheduleDraw();
    api.writeUrl();
  }
  api.search = search;
  api.pick = pick;
  api.clearSearch = clearSearch;

  // ------------------------------------------------------------------ legend
  function updateStatus() {
    if (state.query === null) { legend.hidden = true; return; }
    var s = api.currentSize(), k = state.query, heat = state.heat[s + ":" + k], level = state.cells[s], top = api.classTop(s, k);
    legend.hidden = false;
    api.$("legend-name").textContent = className(k);
    api.$("legend-unit").textContent = A.values && A.values.unit === "share" ? "share of the cell's images" : "mean attribution (logit units)";
    if (!heat || !level) { status.textContent = "\u2026"; api.$("legend-max").textContent = ""; return; }
    api.$("legend-max").textContent = api.fmtVal(heat.max);
    var grid = " grid" + (top ? " \u00b7 top class in " + top : "");
    status.textContent = heat.cells ? api.plural(heat.cells, "cell") + " of " + api.fmtInt(level.byKey.size) + " on the " + s + "\u00d7" + s + grid :
      "not attributed on the " + s + "\u00d7" + s + " grid";
    api.$("legend-strongest").disabled = !heat.cells;
  }
  api.updateStatus = updateStatus;

  function zoomToStrongest() {  // centre the strongest cell of the shown grid and zoom one grid deeper
    var s = api.currentSize(), heat = state.heat[s + ":" + state.query], lod = api.lod;
    if (!heat || !heat.cells) return;
    var best = 0;
    for (var i = 1; i < heat.values.length; i++) if (heat.values[i] > heat.values[best]) best = i;
    var g = lod.bySize[s], next = lod.finer(g);
    var px = next === g ? Math.max(api.atlasPx(false), lod.finest.width) : lod.pxShowing(next, api.homePx());
    api.zoomTo(px, (best % s + 0.5) / s, (Math.floor(best / s) + 0.5) / s);
  }
  api.zoomToStrongest = zoomToStrongest;

  // ------------------------------------------------------------------ events
  function onKey(e) {
    var n = Math.min(shown.length, LIST_MAX);
    if (e.key === "ArrowDown" || e.key === "ArrowUp") {
      if (list.hidden) renderList(input.value);
      if (n) setActive((activeOption + (e.key === "ArrowDown" ? 1 : n - 1)) % n);
      e.preventDefault();
    } else if (e.key === "Enter") {
      e.preventDefault();
      if (!list.hidden && activeOption >= 0 && shown[activeOption]) choose(shown[activeOption]); else search(input.value);
    } else if (e.key === "Escape") {
      e.stopPropagation();
      if (!list.hidden) closeList(); else clearSearch();
    }
  }
  function listen() {
    input.addEventListener("input", function () { renderList(input.value); });
    input.addEventListener("focus", function () { if (input.value.trim() && state.query === null) renderList(input.value); });
    input.addEventListener("keydown", onKey);
    list.addEventListener("mousedown", function (e) {  // mousedown: before the input's blur closes the list
      var li = e.target.closest("li[data-k], li[data-x]");
      if (!li) return;
      e.preventDefault();
      if (li.hasAttribute("data-x")) choose(shown[Number(li.getAttribute("data-x"))]); else pick(Number(li.getAttribute("data-k")));
    });
    input.addEventListener("blur", function () { setTimeout(closeList, 150); });
    api.$("search-clear").addEventListener("click", clearSearch);
    api.$("legend-strongest").addEventListener("click", zoomToStrongest);
  }

  api.setup.search = function (atlas) {
    A = atlas;
    input = api.$("search-input");
    list = api.$("search-list");
    status = api.$("search-status");
    legend = api.$("legend");
    if (A.top_kind === "none" || !A.search_classes.length) input.disabled = true;
    api.$("legend-bar").style.background = "linear-gradient(to right, " + api.colour.VIRIDIS.join(", ") + ")";
    listen();
  };
})(window.atlasViewer);
