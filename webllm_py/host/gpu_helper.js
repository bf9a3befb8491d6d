// The JavaScript half of the browser host (host/browser.py): WebGPU objects live here, in tables, and Python refers
// to them by index. Python -> JS calls cost microseconds each (pyodide_ecosystem.md section 1.8), so everything
// that happens per step is one call: a prepared plan of dispatches is encoded, submitted and followed by its copies
// in `submitPlan` (or encoded ahead in `encodePlan` and submitted by `submitEncoded`), with no conversion of arguments
// (they are small ints).
//
// Evaluated by pyodide.code.run_js: the file is one expression, a function of the GPUDevice that returns the
// helper object.
(function createGpuHelper(device) {
  "use strict";
  const buffers = []; // index -> GPUBuffer, or null once destroyed
  const pipelines = []; // index -> GPUComputePipeline
  const bindGroups = []; // index -> GPUBindGroup
  const plans = []; // index -> Int32Array of (pipeline, bind group, x, y, z) tuples
  const errors = []; // messages of WebGPU errors nobody has seen yet (validation, out of memory, shader compile)
  const scopes = new Set(); // error scopes popped but not yet settled
  let lost = null; // the GPUDeviceLostInfo message once the device is gone
  let encoded = null; // a decode step encoded ahead (encodePlan) and not yet submitted
  const queue = device.queue;

  device.addEventListener("uncapturederror", (event) => errors.push(event.error.message));
  device.lost.then((info) => {
    lost = `${info.reason}: ${info.message}`;
  });

  // A Python bytes-like object arrives as a PyProxy; its buffer is read in place (a view of wasm memory, valid
  // only during this call: nothing here allocates in Python, so the memory cannot grow under the view).
  function withBytes(pyBuffer, kind, fn) {
    const view = pyBuffer.getBuffer(kind);
    try {
      return fn(view.data);
    } finally {
      view.release();
    }
  }

  function encodeDispatches(pass, plan) {
    let lastPipeline = -1;
    for (let i = 0; i < plan.length; i += 5) {
      const p = plan[i];
      if (p !== lastPipeline) {
        pass.setPipeline(pipelines[p]);
        lastPipeline = p;
      }
      pass.setBindGroup(0, bindGroups[plan[i + 1]]);
      pass.dispatchWorkgroups(plan[i + 2], plan[i + 3], plan[i + 4]);
    }
  }

  function encode(plan, copies) {
    const encoder = device.createCommandEncoder();
    if (plan.length) {
      const pass = encoder.beginComputePass();
      encodeDispatches(pass, plan);
      pass.end();
    }
    // copies: flat (src, srcOffset, dst, dstOffset, size) tuples
    for (let i = 0; i < copies.length; i += 5) {
      encoder.copyBufferToBuffer(buffers[copies[i]], copies[i + 1], buffers[copies[i + 2]], copies[i + 3], copies[i + 4]);
    }
    return encoder.finish();
  }

  function submit(plan, copies) {
    queue.submit([encode(plan, copies)]);
  }

  function scoped(label, fn) {
    // Shader compilation and layout errors are reported asynchronously; keep them with the label that caused them.
    device.pushErrorScope("validation");
    const result = fn();
    const settled = device.popErrorScope().then((error) => {
      if (error) errors.push(`${label}: ${error.message}`);
      scopes.delete(settled);
    });
    scopes.add(settled);
    return result;
  }

  return {
    createBuffer(size, usage, label) {
      const buffer = scoped(label, () => device.createBuffer({ size, usage, label }));
      buffers.push(buffer);
      return buffers.length - 1;
    },

    destroyBuffer(index) {
      buffers[index].destroy();
      buffers[index] = null;
    },

    writeBuffer(index, offset, pyBuffer) {
      withBytes(pyBuffer, "u8", (bytes) => queue.writeBuffer(buffers[index], offset, bytes));
    },

    writeBufferFromJs(index, offset, bytes) {
      queue.writeBuffer(buffers[index], offset, bytes);
    },

    createPipeline(code, label) {
      const pipeline = scoped(label, () => {
        const module = device.createShaderModule({ code, label });
        return device.createComputePipeline({ layout: "auto", compute: { module, entryPoint: "main" }, label });
      });
      pipelines.push(pipeline);
      return pipelines.length - 1;
    },

    // entries: a Python buffer of int32 (binding, buffer index, offset, size) tuples
    createBindGroup(pipelineIndex, label, pyEntries) {
      const flat = withBytes(pyEntries, "i32", (a) => Array.from(a));
      const entries = [];
      for (let i = 0; i < flat.length; i += 4) {
        entries.push({ binding: flat[i], resource: { buffer: buffers[flat[i + 1]], offset: flat[i + 2], size: flat[i + 3] } });
      }
      const layout = pipelines[pipelineIndex].getBindGroupLayout(0);
      bindGroups.push(scoped(label, () => device.createBindGroup({ layout, entries, label })));
      return bindGroups.length - 1;
    },

    // A dispatch list kept on this side: each later submitPlan is one call with no conversion.
    prepare(pyDispatches) {
      plans.push(withBytes(pyDispatches, "i32", (a) => a.slice()));
      return plans.length - 1;
    },

    // Up to two copies as plain int arguments (the decode step has one: the sampled token to a readback buffer).
    submitPlan(planIndex, ...copies) {
      submit(plans[planIndex], copies);
    },

    // The same, encoded now and submitted later (submitEncoded): the next decode step is built while the GPU still
    // runs the current one. One at a time: encoding again drops a step never submitted.
    encodePlan(planIndex, ...copies) {
      encoded = encode(plans[planIndex], copies);
    },

    submitEncoded() {
      if (!encoded) throw new Error("submitEncoded: no encoded step (already submitted, or never encoded)");
      queue.submit([encoded]);
      encoded = null;
    },

    // A dispatch list used once (a prefill chunk, a weight repack) and copies, both as Python int32 buffers.
    submitOnce(pyDispatches, pyCopies) {
      const plan = withBytes(pyDispatches, "i32", (a) => a.slice());
      const copies = withBytes(pyCopies, "i32", (a) => a.slice());
      submit(plan, copies);
    },

    // Map a MAP_READ buffer and return a copy of [offset, offset + size).
    async read(index, offset, size) {
      const buffer = buffers[index];
      const mapped = (size + 3) & ~3;
      await buffer.mapAsync(GPUMapMode.READ, offset, mapped);
      let data;
      try {
        data = new Uint8Array(buffer.getMappedRange(offset, mapped).slice(0, size));
      } finally {
        buffer.unmap();
      }
      // Errors reported meanwhile fail the read, so the per-step read needs no second call to look for them.
      if (errors.length) throw new Error("WebGPU reported errors (takeErrors)");
      return data;
    },

    // Read any COPY_SRC buffer through a temporary staging buffer.
    async readStorage(index, offset, size) {
      const mapped = (size + 3) & ~3;
      const staging = device.createBuffer({ size: mapped, usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST });
      try {
        const encoder = device.createCommandEncoder();
        encoder.copyBufferToBuffer(buffers[index], offset, staging, 0, mapped);
        queue.submit([encoder.finish()]);
        await staging.mapAsync(GPUMapMode.READ);
        return new Uint8Array(staging.getMappedRange().slice(0, size));
      } finally {
        staging.destroy();
      }
    },

    // Resolves once the GPU finished everything submitted so far and every error scope opened so far settled.
    async idle() {
      await queue.onSubmittedWorkDone();
      await Promise.all([...scopes]);
    },

    takeErrors() {
      return errors.splice(0, errors.length);
    },

    lostReason() {
      return lost;
    },

    destroy() {
      for (const b of buffers) if (b) b.destroy();
      device.destroy();
    },
  };
});
