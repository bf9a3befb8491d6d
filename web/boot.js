// What every engine host script shares (worker.js, sw.js, the extension's background.js): reading the boot config
// and installing our wheels into a started Pyodide.
//
// The config is a JSON file next to the host script (default "webllm_py.json", written by `python3 build.py demo`),
// or another one named by ?config=URL on the script's URL. Relative URLs in it are relative to that file:
//
//   { "indexURL": "pyodide/",                 where pyodide.mjs and the runtime are (a real site: a CDN)
//     "packages": ["micropip"],               packages from the Pyodide lock, loaded while the runtime starts
//     "wheels": ["wheels/webllm_py-0.1.0-py3-none-any.whl"],   installed with micropip.install(url, deps=False)
//     "handler": "webllm_py.worker.handler",  Python module with create_handler(post) (dedicated worker only)
//     "appConfig": {"model_list": [...]} }    the site's models, the engine's app config until a page sends one
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
    // loadPyodide wants the directory with a trailing slash
    indexURL: indexURL.endsWith("/") ? indexURL : indexURL + "/",
    packages: config.packages || ["micropip"],
    wheels: wheels.map((w) => new URL(w, base).href),
    handler: params.get("handler") || config.handler || "webllm_py.worker.handler",
    // The site's model list: the engine's app config until a page sends its own (relative model URLs are
    // relative to the host script, like the config file next to it).
    appConfig: config.appConfig ? JSON.stringify(config.appConfig) : null,
  };
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
