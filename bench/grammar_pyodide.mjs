// bench/grammar.py inside Pyodide under Node (V8: the wasm engine Chrome runs), on the same vocabularies.
//
//   node bench/grammar_pyodide.mjs PYODIDE_DIR VOCAB.gguf [VOCAB.gguf ...]
//
// PYODIDE_DIR holds pyodide.mjs (e.g. the dist/pyodide that build.py assembles). The package's .py files and
// bench/grammar.py are copied into Pyodide's file system; each GGUF's folder is mounted read-only (NODEFS).
// Prints bench/grammar.py's JSON.
import { readdirSync, readFileSync, statSync } from "node:fs";
import { dirname, join, resolve, basename } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";

const [pyodideDir, ...vocabs] = process.argv.slice(2);
if (!pyodideDir || vocabs.length === 0) {
  console.error("usage: node bench/grammar_pyodide.mjs PYODIDE_DIR VOCAB.gguf [VOCAB.gguf ...]");
  process.exit(2);
}
const repo = resolve(dirname(fileURLToPath(import.meta.url)), "..");
const { loadPyodide } = await import(pathToFileURL(join(resolve(pyodideDir), "pyodide.mjs")).href);
const py = await loadPyodide({ indexURL: resolve(pyodideDir) + "/" });

function copyTree(src, dst) {
  py.FS.mkdirTree(dst);
  for (const name of readdirSync(src)) {
    const s = join(src, name);
    if (statSync(s).isDirectory()) {
      if (name !== "__pycache__") copyTree(s, `${dst}/${name}`);
    } else if (name.endsWith(".py")) {
      py.FS.writeFile(`${dst}/${name}`, readFileSync(s));
    }
  }
}
copyTree(join(repo, "webllm_py"), "/repo/webllm_py");
py.FS.mkdirTree("/repo/bench");
py.FS.writeFile("/repo/bench/grammar.py", readFileSync(join(repo, "bench", "grammar.py")));

const args = [];
vocabs.forEach((v, i) => {
  const mount = `/vocab${i}`;
  py.FS.mkdirTree(mount);
  py.FS.mount(py.FS.filesystems.NODEFS, { root: dirname(resolve(v)) }, mount);
  args.push("--vocab", `${mount}/${basename(v)}`);
});
py.globals.set("bench_args", py.toPy(args));
await py.runPythonAsync(`
import sys, runpy
sys.path.insert(0, "/repo")
sys.argv = ["bench/grammar.py", *bench_args]
runpy.run_path("/repo/bench/grammar.py", run_name="__main__")
`);
