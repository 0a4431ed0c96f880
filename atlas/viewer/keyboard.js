/* The keyboard: on the map, the arrows move a cell cursor (the first puts it on the centre cell),
 * Enter activates its cell (as a click); Esc closes, in turn, the click panel, what an overlay
 * shows (its onEscape), the cursor, the class search.
 */
(function (api) {
  "use strict";

  var MOVES = { ArrowUp: [-1, 0], ArrowDown: [1, 0], ArrowLeft: [0, -1], ArrowRight: [0, 1] };
  var state = api.state;

  function clamp(s, i) { return Math.min(s - 1, Math.max(0, i)); }
  function moveCursor(dr, dc) {
    var s = api.currentSize(), cur = state.cursor;
    if (!cur || cur.s !== s) {
      var centre = api.viewer.viewport.getCenter(true);
      state.cursor = { s: s, row: clamp(s, Math.floor(centre.y * s)), col: clamp(s, Math.floor(centre.x * s)) };
    } else {
      state.cursor = { s: s, row: clamp(s, cur.row + dr), col: clamp(s, cur.col + dc) };
    }
    var r = api.cellRect(s, state.cursor.row, state.cursor.col), vs = api.viewSize();
    if (r.x < 0 || r.y < 0 || r.x + r.w > vs.w || r.y + r.h > vs.h) {
      api.viewer.viewport.panTo(new OpenSeadragon.Point((state.cursor.col + 0.5) / s, (state.cursor.row + 0.5) / s));
    } else {
      showCursorCard();
    }
    api.scheduleDraw();
  }
  api.moveCursor = moveCursor;

  function cursorHit() {  // {s, row, col, cell|null} under the cursor, or null when its grid's cells are not loaded
    var cur = state.cursor, level = cur && state.cells[cur.s];
    if (!level) return null;
    return { s: cur.s, row: cur.row, col: cur.col, cell: level.byKey.get(cur.row * cur.s + cur.col) || null };
  }
  function showCursorCard() {
    var hit = cursorHit();
    if (!hit) return;
    var cell = hit.cell, r = api.cellRect(hit.s, hit.row, hit.col);
    api.$("zoom-info").setAttribute("aria-label", cell ? "cell " + hit.row + ", " + hit.col + ": " + (cell.top.length ? cell.top[0].name + ", " : "") +
      api.countText(cell) : "empty cell " + hit.row + ", " + hit.col);
    if (cell) api.showCard(hit, r.x + r.w - 8, r.y + 8); else api.$("hover-card").hidden = true;
  }

  function onCanvasKey(e) {
    var key = e.originalEvent.key, hit;
    if (MOVES[key]) {
      e.preventDefaultAction = true;
      e.originalEvent.preventDefault();
      moveCursor(MOVES[key][0], MOVES[key][1]);
    } else if (key === "Enter" && state.cursor) {
      e.preventDefaultAction = true;
      hit = cursorHit();
      if (hit) api.activateCell(hit);
    }
  }
  function onEscape(e) {
    if (e.key !== "Escape") return;
    if (api.panelOpen()) { api.closePanel(); return; }
    if (api.callOverlays("onEscape").some(function (r) { return r.value === true; })) return;
    if (state.cursor) { state.cursor = null; api.$("hover-card").hidden = true; api.scheduleDraw(); }
    else if (state.query !== null) api.clearSearch();
  }

  api.setup.keyboard = function () {
    api.viewer.addHandler("canvas-key", onCanvasKey);
    api.viewer.addHandler("animation-finish", function () { if (state.cursor && document.activeElement === api.viewer.canvas) showCursorCard(); });
    document.addEventListener("keydown", onEscape);
  };
})(window.atlasViewer);
