// ESLint (flat config) for the web viewer's own scripts, atlas/viewer/*.js: plain scripts loaded in order by
// index.html (no modules, so the page also works from file://), sharing one namespace, window.atlasViewer.
// `npm run --prefix viewer lint` (and `make lint`) runs it from the checkout's root.
"use strict";

const js = require("@eslint/js");
const globals = require("globals");

module.exports = [
  { ignores: ["atlas/viewer/vendor/**"] },
  js.configs.recommended,
  {
    files: ["atlas/viewer/**/*.js"],
    languageOptions: {
      ecmaVersion: 2020,
      sourceType: "script",
      globals: { ...globals.browser, OpenSeadragon: "readonly" }
    },
    rules: {
      "no-unused-vars": ["error", { args: "after-used", caughtErrors: "all" }],
      "no-undef": "error",
      strict: ["error", "function"],
      // one concern per function; a script's wrapping (function () { ... })() is not counted
      "max-lines-per-function": ["error", { max: 80, skipBlankLines: true, skipComments: true, IIFEs: false }]
    }
  }
];
