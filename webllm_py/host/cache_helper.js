// The JavaScript half of the browser model cache (host/browser_cache.py): download a model file once, with
// progress, into the storage the app config names, and read byte ranges of it back without loading it whole.
//
//   "cache"      Cache API (WebLLM's default), cache "webllm_py/model", keyed by URL. A body is stored by
//                cache.put(url, Response(stream)) while it downloads; reads are blob slices.
//   "indexeddb"  IndexedDB database "webllm_py/model": store "files" {url, size, chunkBytes} written last (so a
//                file record means a complete file), store "chunks" {url, index, data: ArrayBuffer} of 8 MiB.
//   "opfs"       Origin Private File System, folder "webllm_py-model": <sha256(url)>.bin plus <same>.json written
//                last. In a worker, reads are synchronous (FileSystemSyncAccessHandle), straight into Python memory.
//
// Failures are thrown as Errors whose name is one of webllm_py's error classes (ModelDownloadError,
// StorageQuotaError, ModelIntegrityError); browser_cache.py raises them again as those classes. A failed download
// removes what it stored: nothing half-cached is ever taken for a model.
//
// Evaluated by pyodide.code.run_js: the file is one expression whose value is the helper object.
(() => {
  "use strict";
  const SCOPE = "webllm_py/model";
  const OPFS_DIR = "webllm_py-model";
  const IDB_CHUNK = 8 << 20;
  const MiB = 1 << 20;

  function fail(name, message) {
    const error = new Error(message);
    error.name = name;
    return error;
  }

  function isQuotaError(e) {
    return e && (e.name === "QuotaExceededError" || /quota/i.test(String(e.message)));
  }

  async function storageEstimate() {
    if (!navigator.storage || !navigator.storage.estimate) return null;
    const { quota, usage } = await navigator.storage.estimate();
    return { quota, usage };
  }

  // WebLLM users most often hit quota errors half-way through multi-GB downloads (web-llm #144): refuse up front.
  async function checkQuota(url, total) {
    if (!total) return;
    const estimate = await storageEstimate();
    if (!estimate || !estimate.quota) return;
    const free = estimate.quota - estimate.usage;
    if (total > free) {
      throw fail(
        "StorageQuotaError",
        `${url} needs ${(total / MiB).toFixed(1)} MiB, but this site may store only ${(free / MiB).toFixed(1)} MiB more ` +
          `(quota ${(estimate.quota / MiB).toFixed(0)} MiB, used ${(estimate.usage / MiB).toFixed(0)} MiB). Free ` +
          `space with deleteModelInCache(), leave private browsing, or free disk space.`,
      );
    }
  }

  async function startDownload(url) {
    let response;
    try {
      response = await fetch(url, { cache: "no-store" });
    } catch (e) {
      throw fail("ModelDownloadError", `Download of ${url} failed: ${e.message} (network error, or the server sends no CORS headers)`);
    }
    if (!response.ok) {
      throw fail("ModelDownloadError", `Download of ${url} failed: HTTP ${response.status} ${response.statusText}`);
    }
    const length = response.headers.get("Content-Length");
    const encoded = response.headers.get("Content-Encoding");
    // With a Content-Encoding the header counts compressed bytes, not what the body stream yields.
    const total = length !== null && !encoded ? Number(length) : null;
    return { response, total };
  }

  // Count bytes as they pass; onProgress(done, total) at most every 1% or 250 ms, and at the end.
  function counter(total, onProgress, state) {
    let lastReport = 0;
    let lastDone = 0;
    return new TransformStream({
      transform(chunk, controller) {
        state.done += chunk.byteLength;
        const now = performance.now();
        if (onProgress && (now - lastReport > 250 || (total && state.done - lastDone >= total / 100))) {
          lastReport = now;
          lastDone = state.done;
          onProgress(state.done, total);
        }
        controller.enqueue(chunk);
      },
      flush() {
        if (onProgress) onProgress(state.done, total);
      },
    });
  }

  function checkLength(url, done, total, expected) {
    if (total !== null && done !== total) {
      throw fail("ModelDownloadError", `Download of ${url} is truncated: got ${done} of ${total} bytes`);
    }
    if (expected && done !== expected) {
      throw fail("ModelIntegrityError", `Download of ${url} has ${done} bytes, but the model record says ${expected}`);
    }
  }

  function asDownloadError(url, e) {
    if (["ModelDownloadError", "StorageQuotaError", "ModelIntegrityError"].includes(e.name)) return e;
    if (isQuotaError(e)) {
      return fail("StorageQuotaError", `The browser refused to store ${url}: ${e.message}. Free space with deleteModelInCache(), or leave private browsing.`);
    }
    return fail("ModelDownloadError", `Download of ${url} failed: ${e.name}: ${e.message}`);
  }

  // ---- Cache API ------------------------------------------------------------------------------------------------

  const cacheApi = {
    async has(url) {
      const cache = await caches.open(SCOPE);
      return (await cache.match(url)) !== undefined;
    },

    async download(url, expected, onProgress) {
      const { response, total } = await startDownload(url);
      const state = { done: 0 };
      const cache = await caches.open(SCOPE);
      try {
        await checkQuota(url, total || expected);
        const body = response.body.pipeThrough(counter(total || expected, onProgress, state));
        const headers = { "Content-Type": response.headers.get("Content-Type") || "application/octet-stream" };
        await cache.put(url, new Response(body, { headers }));
        checkLength(url, state.done, total, expected);
      } catch (e) {
        await response.body?.cancel().catch(() => {});
        await cache.delete(url).catch(() => {});
        throw asDownloadError(url, e);
      }
      return state.done;
    },

    async open(url) {
      const cache = await caches.open(SCOPE);
      const response = await cache.match(url);
      if (!response) throw fail("ModelDownloadError", `${url} is not in the cache "${SCOPE}"`);
      const blob = await response.blob(); // backed by the cache entry: nothing is read yet
      return blobReader(blob);
    },

    async remove(url) {
      const cache = await caches.open(SCOPE);
      await cache.delete(url);
    },
  };

  function blobReader(blob) {
    return {
      size: blob.size,
      sync: false,
      async read(offset, n) {
        return new Uint8Array(await blob.slice(offset, offset + n).arrayBuffer());
      },
      close() {},
    };
  }

  // ---- IndexedDB ------------------------------------------------------------------------------------------------

  function idbRequest(request) {
    return new Promise((resolve, reject) => {
      request.onsuccess = () => resolve(request.result);
      request.onerror = () => reject(request.error);
    });
  }

  function idbDone(tx) {
    return new Promise((resolve, reject) => {
      tx.oncomplete = () => resolve();
      tx.onerror = () => reject(tx.error);
      tx.onabort = () => reject(tx.error || fail("ModelDownloadError", "IndexedDB transaction aborted"));
    });
  }

  let idbPromise = null;
  function idbOpen() {
    if (!idbPromise) {
      const request = indexedDB.open(SCOPE, 1);
      request.onupgradeneeded = () => {
        const db = request.result;
        db.createObjectStore("files", { keyPath: "url" });
        db.createObjectStore("chunks", { keyPath: ["url", "index"] });
      };
      idbPromise = idbRequest(request);
    }
    return idbPromise;
  }

  async function idbPutChunk(db, url, index, bytes) {
    const tx = db.transaction("chunks", "readwrite");
    tx.objectStore("chunks").put({ url, index, data: bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength) });
    await idbDone(tx);
  }

  const indexedDb = {
    async has(url) {
      const db = await idbOpen();
      const record = await idbRequest(db.transaction("files").objectStore("files").get(url));
      return record !== undefined;
    },

    async download(url, expected, onProgress) {
      const { response, total } = await startDownload(url);
      const state = { done: 0 };
      const db = await idbOpen();
      try {
        await checkQuota(url, total || expected);
        const reader = response.body.pipeThrough(counter(total || expected, onProgress, state)).getReader();
        let chunk = new Uint8Array(IDB_CHUNK);
        let filled = 0;
        let index = 0;
        for (;;) {
          const { done, value } = await reader.read();
          if (done) break;
          let at = 0;
          while (at < value.byteLength) {
            const n = Math.min(IDB_CHUNK - filled, value.byteLength - at);
            chunk.set(value.subarray(at, at + n), filled);
            filled += n;
            at += n;
            if (filled === IDB_CHUNK) {
              await idbPutChunk(db, url, index++, chunk);
              chunk = new Uint8Array(IDB_CHUNK);
              filled = 0;
            }
          }
        }
        if (filled) await idbPutChunk(db, url, index++, chunk.subarray(0, filled));
        checkLength(url, state.done, total, expected);
        const tx = db.transaction("files", "readwrite");
        tx.objectStore("files").put({ url, size: state.done, chunkBytes: IDB_CHUNK });
        await idbDone(tx);
      } catch (e) {
        await response.body?.cancel().catch(() => {});
        await indexedDb.remove(url).catch(() => {});
        throw asDownloadError(url, e);
      }
      return state.done;
    },

    async open(url) {
      const db = await idbOpen();
      const file = await idbRequest(db.transaction("files").objectStore("files").get(url));
      if (!file) throw fail("ModelDownloadError", `${url} is not in the IndexedDB cache "${SCOPE}"`);
      let cached = { index: -1, bytes: null }; // reads are mostly sequential: keep the last chunk
      async function chunkAt(index) {
        if (cached.index !== index) {
          const record = await idbRequest(db.transaction("chunks").objectStore("chunks").get([url, index]));
          if (!record) throw fail("ModelDownloadError", `chunk ${index} of ${url} is missing from IndexedDB`);
          cached = { index, bytes: new Uint8Array(record.data) };
        }
        return cached.bytes;
      }
      return {
        size: file.size,
        sync: false,
        async read(offset, n) {
          const end = Math.min(offset + n, file.size);
          const out = new Uint8Array(Math.max(0, end - offset));
          let at = offset;
          while (at < end) {
            const index = Math.floor(at / file.chunkBytes);
            const bytes = await chunkAt(index);
            const start = at - index * file.chunkBytes;
            const take = Math.min(bytes.byteLength - start, end - at);
            out.set(bytes.subarray(start, start + take), at - offset);
            at += take;
          }
          return out;
        },
        close() {
          cached = { index: -1, bytes: null };
        },
      };
    },

    async remove(url) {
      const db = await idbOpen();
      const tx = db.transaction(["files", "chunks"], "readwrite");
      tx.objectStore("files").delete(url);
      tx.objectStore("chunks").delete(IDBKeyRange.bound([url, 0], [url, Infinity]));
      await idbDone(tx);
    },
  };

  // ---- OPFS -----------------------------------------------------------------------------------------------------

  const openHandles = new Map(); // file name -> FileSystemSyncAccessHandle held by an open reader (locks the file)

  async function opfsNames(url) {
    const digest = await crypto.subtle.digest("SHA-256", new TextEncoder().encode(url));
    const hex = Array.from(new Uint8Array(digest), (b) => b.toString(16).padStart(2, "0")).join("");
    return { data: `${hex}.bin`, done: `${hex}.json` };
  }

  async function opfsDir() {
    const root = await navigator.storage.getDirectory();
    return root.getDirectoryHandle(OPFS_DIR, { create: true });
  }

  async function exists(dir, name) {
    try {
      await dir.getFileHandle(name);
      return true;
    } catch {
      return false;
    }
  }

  const opfs = {
    async has(url) {
      const names = await opfsNames(url);
      return exists(await opfsDir(), names.done);
    },

    async download(url, expected, onProgress) {
      const { response, total } = await startDownload(url);
      const names = await opfsNames(url);
      const dir = await opfsDir();
      const state = { done: 0 };
      try {
        await checkQuota(url, total || expected);
        await opfsClose(names.data);
        const handle = await dir.getFileHandle(names.data, { create: true });
        const body = response.body.pipeThrough(counter(total || expected, onProgress, state));
        if (handle.createSyncAccessHandle) {
          // In a worker: synchronous writes, the fastest path (pyodide_ecosystem.md section 5.1).
          const access = await handle.createSyncAccessHandle();
          try {
            access.truncate(0);
            const reader = body.getReader();
            let written = 0;
            for (;;) {
              const { done, value } = await reader.read();
              if (done) break;
              let at = 0;
              while (at < value.byteLength) {
                const n = access.write(value.subarray(at), { at: written });
                at += n;
                written += n;
              }
            }
            access.flush();
          } finally {
            access.close();
          }
        } else {
          await body.pipeTo(await handle.createWritable());
        }
        checkLength(url, state.done, total, expected);
        const marker = await (await dir.getFileHandle(names.done, { create: true })).createWritable();
        await marker.write(JSON.stringify({ url, size: state.done }));
        await marker.close();
      } catch (e) {
        await response.body?.cancel().catch(() => {});
        await opfs.remove(url).catch(() => {});
        throw asDownloadError(url, e);
      }
      return state.done;
    },

    async open(url) {
      const names = await opfsNames(url);
      const dir = await opfsDir();
      if (!(await exists(dir, names.done))) throw fail("ModelDownloadError", `${url} is not in OPFS "${OPFS_DIR}"`);
      const handle = await dir.getFileHandle(names.data);
      if (!handle.createSyncAccessHandle) return blobReader(await handle.getFile());
      await opfsClose(names.data);
      const access = await handle.createSyncAccessHandle();
      openHandles.set(names.data, access);
      return {
        size: access.getSize(),
        sync: true,
        // Reads straight into a Python buffer (a bytearray's memory in the wasm heap): no copy on the way.
        readInto(pyBuffer, offset) {
          const view = pyBuffer.getBuffer("u8");
          try {
            return access.read(view.data, { at: offset });
          } finally {
            view.release();
          }
        },
        async read(offset, n) {
          const out = new Uint8Array(n);
          const got = access.read(out, { at: offset });
          return out.subarray(0, got);
        },
        close() {
          if (openHandles.get(names.data) === access) {
            openHandles.delete(names.data);
            access.close();
          }
        },
      };
    },

    async remove(url) {
      const names = await opfsNames(url);
      await opfsClose(names.data);
      const dir = await opfsDir();
      for (const name of [names.done, names.data]) await dir.removeEntry(name).catch(() => {});
    },
  };

  async function opfsClose(name) {
    const access = openHandles.get(name);
    if (access) {
      openHandles.delete(name);
      access.close();
    }
  }

  const backends = { cache: cacheApi, indexeddb: indexedDb, opfs };

  function backend(name) {
    const b = backends[name];
    if (!b) throw fail("ModelDownloadError", `unknown cache backend ${name}: use "cache", "indexeddb" or "opfs"`);
    return b;
  }

  return {
    has: (name, url) => backend(name).has(url),
    download: (name, url, expected, onProgress) => backend(name).download(url, expected, onProgress),
    open: (name, url) => backend(name).open(url),
    remove: (name, url) => backend(name).remove(url),
    estimate: storageEstimate,
  };
})();
