/* The atlas's data beyond atlas.js, loaded lazily with script tags (so the folder also works from
 * file://): cells-<s>.js (window.ATLAS_CELLS_<s>: every non-empty cell of grid s) and
 * heat/<s>/<k>.js (window.ATLAS_HEAT_<s>_<k>: class k's value in every cell of grid s, uint8,
 * base64, dense or sparse). Each file is asked for once; its promise is kept.
 */
(function (api) {
  "use strict";

  var state = api.state;
  var classIndex = null;  // class id -> position in search_classes (and in class_cells / class_top)

  function atlas() { return window.ATLAS; }
  function indexCells(doc) {
    var byKey = new Map();
    doc.cells.forEach(function (cell) { byKey.set(cell.row * doc.size + cell.col, cell); });
    return { doc: doc, size: doc.size, byKey: byKey };
  }
  function loaded() {  // a file arrived: what shows it changes
    if (api.scheduleDraw) api.scheduleDraw();
    if (api.updateStatus) api.updateStatus();
  }

  api.loadCells = function (s) {  // -> Promise of {doc, size, byKey: row * s + col -> cell}
    if (state.cells[s]) return Promise.resolve(state.cells[s]);
    if (state.loading[s]) return state.loading[s];
    var src = api.lod.bySize[s].cells, name = "ATLAS_CELLS_" + s;
    var p = new Promise(function (resolve, reject) {
      var done = function () {
        var doc = window[name];
        if (!doc) { reject(new Error("cells-" + s + ".js did not define " + name)); return; }
        state.cells[s] = indexCells(doc);
        delete window[name];
        resolve(state.cells[s]);
      };
      if (window[name]) { done(); return; }
      api.loadScript(src, done, function () {
        state.errors.push("cannot load " + src);
        reject(new Error("cannot load " + src));
      });
    });
    state.loading[s] = p;
    p.then(loaded, function () {});
    return p;
  };

  // ------------------------------------------------------------------ class heat (per grid and class)
  function b64bytes(text) {
    var bin = atob(text), out = new Uint8Array(bin.length);
    for (var i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
    return out;
  }
  function decodeHeat(doc) {  // -> {size, k, max, cells, values: Uint8Array [size * size]}
    var n = doc.size * doc.size, values = new Uint8Array(n), v = b64bytes(doc.values);
    if (doc.encoding === "sparse") {
      var idx = b64bytes(doc.index), dv = new DataView(idx.buffer);
      for (var i = 0; i < v.length; i++) values[dv.getUint32(4 * i, true)] = v[i];
    } else {
      values.set(v);
    }
    return { size: doc.size, k: doc["class"], max: doc.max, cells: doc.cells, values: values };
  }
  function perClass(table, s, k) {  // atlas.json's class_cells / class_top entry of class k on grid s
    if (!classIndex) {
      classIndex = new Map();
      atlas().search_classes.forEach(function (c, i) { classIndex.set(c, i); });
    }
    var i = classIndex.get(k);
    return i === undefined || !table[String(s)] ? 0 : table[String(s)][i];
  }
  api.classCells = function (s, k) { return perClass(atlas().class_cells, s, k); };  // cells of grid s where k is positive
  api.classTop = function (s, k) { return perClass(atlas().class_top, s, k); };      // cells of grid s whose top class is k

  function fetchHeat(s, k, key) {
    var t0 = performance.now(), A = atlas();
    return new Promise(function (resolve, reject) {
      var name = "ATLAS_HEAT_" + s + "_" + k, src = A.heat_url.replace("{size}", s).replace("{class}", k);
      api.loadScript(src, function () {
        var doc = window[name];
        if (!doc) { reject(new Error(src + " did not define " + name)); return; }
        delete window[name];
        state.heat[key] = decodeHeat(doc);
        state.heatMs[key] = performance.now() - t0;
        resolve(state.heat[key]);
      }, function () { state.errors.push("cannot load " + src); reject(new Error("cannot load " + src)); });
    });
  }
  api.loadHeat = function (s, k) {  // -> Promise of the decoded heat of class k on grid s
    var key = s + ":" + k;
    if (state.heat[key]) return Promise.resolve(state.heat[key]);
    if (state.heatLoading[key]) return state.heatLoading[key];
    if (!api.classCells(s, k)) {  // no file: the class has no cell on this grid
      state.heat[key] = { size: s, k: k, max: 0, cells: 0, values: new Uint8Array(s * s) };
      return Promise.resolve(state.heat[key]);
    }
    var p = fetchHeat(s, k, key);
    state.heatLoading[key] = p;
    p.then(loaded, function () {});
    return p;
  };
})(window.atlasViewer);
