// What every engine host shares (the worker handlers in webllm_py.js that worker.js, sw.js and the extension's
// background.js run): reading the boot config, starting Pyodide and installing our wheels (bootPython).
//
// The config is a JSON file next to the host script (default "webllm_py.json", written by `python3 build.py demo`),
// or another one named by ?config=URL on the script's URL. Relative URLs in it are relative to that file:
//
//   { "indexURL": "pyodide/",                 where pyodide.mjs and the runtime are (a real site: a CDN)
//     "packages": ["micropip"],               packages from the Pyodide lock, loaded while the runtime starts
//     "wheels": ["wheels/webllm_py-0.1.0-py3-none-any.whl"],   installed with micropip.install(url, deps=False)
//     "handler": "webllm_py.worker.handler",  Python module with create_handler(post) (dedicated worker only)
//     "helpers": "helpers/",                  the host's JS helpers as modules (else Pyodide evaluates them)
//     "appConfig": {"model_list": [...]} }    the site's models: they replace the prebuilt records of the same id
//
// ?indexURL=, ?wheel= (repeatable) and ?handler= override the file.

export async function loadConfig(scriptURL) {
  const here = new URL(scriptURL);
  const params = here.searchParams;
  const configURL = new URL(params.get("config") || "./webllm_py.json", here);
  let config = {};
  const response = await fetch(configURL);
  if (response.ok) config = await response.json();
  else if (params.has("config")) throw new Error(`cannot read the worker config ${configURL}: HTTP ${response.status}`);
  const base = response.ok ? configURL : here;
  const indexURL = new URL(params.get("indexURL") || config.indexURL || "pyodide/", base).href;
  const wheels = params.getAll("wheel").length ? params.getAll("wheel") : config.wheels || [];
  if (!wheels.length) throw new Error("no wheels to install: the worker config lists none");
  return {
    configURL: base.href,
    // loadPyodide wants the directory with a trailing slash
    indexURL: indexURL.endsWith("/") ? indexURL : indexURL + "/",
    packages: config.packages || ["micropip"],
    wheels: wheels.map((w) => new URL(w, base).href),
    handler: params.get("handler") || config.handler || "webllm_py.worker.handler",
    helpersURL: config.helpers ? new URL(config.helpers, base).href : null,
    // The site's model list, over the prebuilt one until a page sends its own; its relative model URLs are
    // relative to this file (made absolute here: a page's own worker script may sit elsewhere).
    appConfig: config.appConfig ? JSON.stringify(absoluteRecords(config.appConfig, base)) : null,
  };
}

function absoluteRecords(appConfig, base) {
  const modelList = (appConfig.model_list || []).map((record) => {
    const copy = { ...record };
    for (const key of ["model_url", "model"]) if (typeof copy[key] === "string") copy[key] = new URL(copy[key], base).href;
    return copy;
  });
  return { ...appConfig, model_list: modelList };
}

// micropip takes http(s) URLs only; a wheel inside a Chrome extension (chrome-extension://) is unpacked directly.
export async function installWheels(pyodide, wheels) {
  const micropip = pyodide.pyimport("micropip");
  try {
    for (const wheel of wheels) {
      if (/^https?:/.test(wheel)) {
        await micropip.install.callKwargs(wheel, { deps: false });
        continue;
      }
      const response = await fetch(wheel);
      if (!response.ok) throw new Error(`cannot fetch the wheel ${wheel}: HTTP ${response.status}`);
      pyodide.unpackArchive(await response.arrayBuffer(), "wheel");
    }
  } finally {
    micropip.destroy();
  }
  pyodide.runPython("import importlib; importlib.invalidate_caches()");
}

// A CSP without 'wasm-unsafe-eval' (an extension's default) makes WebAssembly compilation throw, and loadPyodide
// then never settles. Compiling the smallest module first turns that into an error that says what to fix.
export async function checkWebAssembly() {
  try {
    await WebAssembly.compile(new Uint8Array([0, 97, 115, 109, 1, 0, 0, 0]));
  } catch (error) {
    const e = new Error(
      "WebAssembly is blocked here, so Pyodide cannot start: the Content Security Policy needs " +
        "'wasm-unsafe-eval' in script-src (in a Chrome extension: content_security_policy.extension_pages in " +
        `manifest.json). The browser said: ${error && error.message}`,
    );
    e.name = "WebAssemblyBlockedError";
    throw e;
  }
}

/** Start Python here: Pyodide (``loader.loadPyodide`` and ``loader.createPyodideModule`` where a service worker had to
 *  import them statically; else imported from config.indexURL), our wheels, and the host's JS helpers (gpu_helper,
 *  cache_helper) as modules: ``loader.helpers``, or imported from config.helpersURL. Without them Pyodide evaluates
 *  the helpers' source (run_js), which a Content Security Policy without 'unsafe-eval' refuses. progress(fraction,
 *  text) reports the steps. Returns the pyodide instance. */
export async function bootPython(config, loader = {}, progress = () => {}) {
  await checkWebAssembly();
  progress(0, "Starting the Python runtime (Pyodide)");
  const loadPyodide = loader.loadPyodide || (await import(new URL("pyodide.mjs", config.indexURL).href)).loadPyodide;
  const options = { indexURL: config.indexURL, packages: config.packages };
  if (loader.createPyodideModule) options.createPyodideModule = loader.createPyodideModule;
  const [pyodide, helpers] = await Promise.all([loadPyodide(options), loadHelpers(config, loader)]);
  if (helpers) globalThis.webllmPyHelpers = helpers; // webllm_py/host/browser.py preloaded_helper
  progress(0.7, "Installing webllm_py");
  await installWheels(pyodide, config.wheels);
  return pyodide;
}

async function loadHelpers(config, loader) {
  if (loader.helpers) return loader.helpers;
  if (!config.helpersURL) return null;
  const [gpu, cache] = await Promise.all(
    ["gpu_helper.mjs", "cache_helper.mjs"].map(async (name) => (await import(new URL(name, config.helpersURL).href)).default),
  );
  return { gpu, cache };
}
