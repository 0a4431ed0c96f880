/* The map: OpenSeadragon over one Deep Zoom pyramid per grid, world <-> screen geometry (the world:
 * the atlas is the unit square), the zoom (its limits, the buttons, flying to a cell) and which
 * pyramid is visible.
 *
 * Only the shown grid's pyramid (lod.js decides which) is visible and loads tiles; the one shown
 * before stays underneath until the new one has loaded. The minimap mirrors the pyramids'
 * opacities, so it shows the same picture as the view.
 */
(function (api) {
  "use strict";

  var NARROW = 640;
  var ZOOM_STEP = Math.SQRT2;  // zoom buttons: one step = the grid change of icons growing by sqrt(2)
  var HOME_BELOW_SWITCH = 0.98;

  var state = api.state, A = null, lod = null, viewer = null, osdEl = null, previousGrid = null;

  function tileSource(g) {
    return {
      tileSource: {
        Image: {
          xmlns: "http://schemas.microsoft.com/deepzoom/2008",
          Url: g.tiles_url,
          Format: A.dzi.format,
          Overlap: String(A.dzi.overlap),
          TileSize: String(A.dzi.tile_size),
          Size: { Width: String(g.width), Height: String(g.height) }
        }
      },
      x: 0, y: 0, width: 1,
      opacity: g === lod.coarsest ? 1 : 0,
      preload: false
    };
  }
  function createViewer() {
    var navPx = window.innerWidth <= NARROW ? 84 : 150;
    return OpenSeadragon({
      element: osdEl,
      prefixUrl: "openseadragon/images/",
      tileSources: lod.grids.map(tileSource),
      drawer: "canvas",            // works from file:// (WebGL refuses file:// images) and without a GPU
      crossOriginPolicy: false,
      showNavigationControl: false, // our own buttons: real <button>s, reachable with Tab
      showNavigator: true,
      navigatorPosition: "BOTTOM_RIGHT",
      navigatorWidth: navPx + "px",
      navigatorHeight: navPx + "px",
      visibilityRatio: 0.5,
      animationTime: 0.5,
      zoomPerClick: 2,             // double-click
      zoomPerScroll: 1.2,
      gestureSettingsMouse: { clickToZoom: false, dblClickToZoom: true },
      gestureSettingsTouch: { clickToZoom: false, dblClickToZoom: true }
    });
  }
  function onOpen() {
    state.openMs = performance.now();
    lod.grids.forEach(function (g, i) {
      g.item = viewer.world.getItemAt(i);
      g.item.addHandler("fully-loaded-change", function (e) { if (e.fullyLoaded) settleGrids(); });
    });
    applyLimits();
    if (!api.restoreFromUrl()) viewer.viewport.goHome(true);
    updateGrid();
    api.scheduleDraw();
  }
  function addHandlers() {
    viewer.addHandler("open", onOpen);
    viewer.addHandler("open-failed", function (e) {
      state.errors.push("open-failed: " + (e.message || ""));
      api.showMessage("Could not open the tiles (" + (e.message || "unknown error") + ").");
    });
    viewer.addHandler("tile-load-failed", function (e) { state.errors.push("tile-load-failed: " + (e.message || "")); });
    viewer.addHandler("tile-drawn", function () {
      if (state.firstTileMs === null) state.firstTileMs = performance.now();
      state.tilesDrawn += 1;
    });
    viewer.addHandler("viewport-change", function () { api.hideCard(); updateGrid(); api.scheduleDraw(); });
    ["update-viewport", "animation"].forEach(function (name) { viewer.addHandler(name, function () { updateGrid(); api.scheduleDraw(); }); });
    viewer.addHandler("resize", function () { applyLimits(); api.scheduleDraw(); });
    viewer.addHandler("animation-finish", function () { api.updateStatus(); api.writeUrl(); });
    window.addEventListener("resize", function () { api.scheduleDraw(); });
  }

  api.setup.map = function (atlas) {
    A = atlas;
    lod = api.lod;
    osdEl = api.$("osd");
    viewer = api.viewer = createViewer();
    addHandlers();
    api.$("zoom-in").addEventListener("click", function () { zoomStep(1); });
    api.$("zoom-out").addEventListener("click", function () { zoomStep(-1); });
    api.$("zoom-home").addEventListener("click", function () { zoomStep(0); });
  };

  // ------------------------------------------------------------------ geometry
  function toWorld(x, y) { return viewer.viewport.pointFromPixel(new OpenSeadragon.Point(x, y), true); }
  function toScreen(x, y) { return viewer.viewport.pixelFromPoint(new OpenSeadragon.Point(x, y), true); }
  api.toWorld = toWorld;
  api.toScreen = toScreen;
  api.cellRect = function (s, r, c) {  // on-screen rectangle of cell (r, c) of grid s
    var p0 = toScreen(c / s, r / s), p1 = toScreen((c + 1) / s, (r + 1) / s);
    return { x: p0.x, y: p0.y, w: p1.x - p0.x, h: p1.y - p0.y };
  };
  api.viewSize = function () { return { w: osdEl.clientWidth, h: osdEl.clientHeight }; };
  api.cellAt = function (x, y) {  // viewer-element pixel -> {s, row, col, cell|null}, or null outside the atlas
    var s = currentSize(), p = toWorld(x, y);
    if (p.x < 0 || p.y < 0 || p.x >= 1 || p.y >= 1) return null;
    var col = Math.floor(p.x * s), row = Math.floor(p.y * s), level = state.cells[s];
    if (!level) { api.loadCells(s); return { s: s, row: row, col: col, cell: null, loading: true }; }
    return { s: s, row: row, col: col, cell: level.byKey.get(row * s + col) || null };
  };

  // ------------------------------------------------------------------ zoom: atlas width in screen pixels
  function containerWidth() { return viewer.viewport.getContainerSize().x || osdEl.clientWidth || 1; }
  function atlasPx(current) { return viewer.viewport.getZoom(current !== false) * containerWidth(); }
  function zoomForPx(px) { return px / containerWidth(); }
  function homePx() {
    // the coarsest grid, whole when its cells are then at least home_cell_px wide, else zoomed in until they
    // are (at most until the atlas covers the view), and always below the next grid's switch
    var size = viewer.viewport.getContainerSize(), px = Math.min(size.x, size.y);
    var want = (A.home_cell_px || 100) * lod.coarsest.size;
    if (px < want) px = Math.min(want, Math.max(size.x, size.y));
    if (lod.grids.length > 1) px = Math.min(px, lod.switchPx(lod.grids[1]) * HOME_BELOW_SWITCH);
    return px;
  }
  function applyLimits() {
    var vp = viewer.viewport, home = homePx(), box = vp.getContainerSize();
    vp.defaultZoomLevel = zoomForPx(home);
    vp.minZoomLevel = zoomForPx(Math.min(home, Math.min(box.x, box.y)) * 0.5);
    vp.maxZoomLevel = zoomForPx(Math.max(home, (A.max_zoom || 2) * lod.finest.width));
  }
  function zoomStep(direction) {  // +1 in, -1 out, 0 home
    var vp = viewer.viewport;
    if (direction === 0) vp.goHome(); else vp.zoomBy(direction > 0 ? ZOOM_STEP : 1 / ZOOM_STEP);
    vp.applyConstraints();
  }
  function zoomTo(px, x, y) {  // the atlas px wide (within the zoom limits), (x, y) of the world in the middle
    var vp = viewer.viewport;
    vp.zoomTo(Math.min(vp.getMaxZoom(), zoomForPx(px)));
    vp.panTo(new OpenSeadragon.Point(x, y));
    vp.applyConstraints();
  }
  api.atlasPx = atlasPx;
  api.zoomForPx = zoomForPx;
  api.homePx = homePx;
  api.zoomStep = zoomStep;
  api.zoomTo = zoomTo;
  api.flyToCell = function (s, row, col) {  // cell (row, col) of grid s in the middle at that grid's zoom, then its panel
    var g = lod.bySize[s];
    if (!g) return;
    viewer.addOnceHandler("animation-finish", function () {
      api.loadCells(s).then(function (level) {
        var cell = level.byKey.get(row * s + col);
        if (cell) api.openPanel({ s: s, row: row, col: col, cell: cell });
      }, function () {});
    });
    zoomTo(lod.pxShowing(g, homePx()), (col + 0.5) / s, (row + 0.5) / s);
  };

  // ------------------------------------------------------------------ which pyramid is visible
  function pyramidsOpen() { return viewer.world.getItemCount() === lod.grids.length; }
  function itemOf(s) { return pyramidsOpen() ? lod.bySize[s].item : null; }
  function currentSize() { return state.grid === null ? lod.coarsest.size : state.grid; }
  function mapCell(cell, s) {  // the cell of grid s under the centre of a cell of another grid
    var to = function (i) { return Math.min(s - 1, Math.floor((i + 0.5) * s / cell.s)); };
    return { s: s, row: to(cell.row), col: to(cell.col) };
  }
  function updateGrid() {
    if (!pyramidsOpen()) return;
    var s = lod.gridFor(atlasPx(true));
    if (s === state.grid) return;
    previousGrid = state.grid;
    state.grid = s;
    var item = itemOf(s);
    viewer.world.setItemIndex(item, viewer.world.getItemCount() - 1);  // on top
    item.setOpacity(1);
    lod.grids.forEach(function (g) { if (g.size !== s && g.size !== previousGrid) g.item.setOpacity(0); });
    if (state.cursor) state.cursor = mapCell(state.cursor, s);
    api.loadCells(s);
    if (state.query !== null) api.loadHeat(s, state.query);
    settleGrids();
    api.updateStatus();
  }
  function settleGrids() {  // the new pyramid has loaded: hide the one kept underneath
    var item = state.grid === null ? null : itemOf(state.grid);
    if (!item || !item.getFullyLoaded()) return;
    lod.grids.forEach(function (g) { if (g.size !== state.grid && g.item.getOpacity() !== 0) g.item.setOpacity(0); });
    previousGrid = null;
  }
  api.pyramidsOpen = pyramidsOpen;
  api.currentSize = currentSize;
  api.updateGrid = updateGrid;
})(window.atlasViewer);
