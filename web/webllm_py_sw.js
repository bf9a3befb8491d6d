// webllm_py.js for service workers: the same exports, with Pyodide and the host's JS helpers imported statically,
// which a service worker needs (it cannot import() lazily). A site's or an extension's service worker imports the
// handlers from here:
//
//   import { ServiceWorkerMLCEngineHandler } from "./webllm_py_sw.js";          // was: from "@mlc-ai/web-llm"
//   const handler = new ServiceWorkerMLCEngineHandler();
//
// Pyodide must sit in pyodide/ next to this module, and the helpers in helpers/ (python3 build.py demo / extension
// put them there). Pages import webllm_py.js: this one would make them load Pyodide's 1.3 MB loader for nothing.

import { loadPyodide } from "./pyodide/pyodide.mjs";
import createPyodideModule from "./pyodide/pyodide.asm.mjs";
import gpu from "./helpers/gpu_helper.mjs";
import cache from "./helpers/cache_helper.mjs";
import { usePyodide } from "./webllm_py.js";

usePyodide({ loadPyodide, createPyodideModule, helpers: { gpu, cache } });

export * from "./webllm_py.js";
