// The OTLP export thread (services/common/trace-export.ts). Gets `{ id, rec, pairs, names }` (a sealed batch of
// span records: its three buffers transferred, plus the loop's cache entries it has not seen yet), encodes it
// (otlp-records.mjs), hands the buffers straight back (`{ id, recBack }`), POSTs and answers `{ id, ok, why }`; or
// `{ id, ab, start, end }` (a batch encoded on the loop: the writer's whole ArrayBuffer, transferred) or
// `{ id, text }` (JSON), POSTs it with the same poster the loop uses in-thread, and answers `{ id, ok, why, ab }`,
// handing the buffer back so the loop reuses it. Plain JS: see otlp-post.mjs.
import { writeFileSync } from 'node:fs';
import { setPriority } from 'node:os';
import { parentPort, workerData } from 'node:worker_threads';
import { createPoster } from './otlp-post.mjs';
import { OutBuffer, encodeRecords, writeHeaderBefore } from './otlp-records.mjs';

// This thread's own nice value (trace-export.ts DEFAULT_EXPORT_THREAD_NICE says why): Linux applies
// setpriority(PRIO_PROCESS, 0) to the calling thread only, so the event loop keeps its priority. Lowering a
// nice value needs CAP_SYS_NICE; without it the thread keeps what it inherited (null: keep it anyway).
if (typeof workerData.nice === 'number') {
  try {
    setPriority(workerData.nice);
  } catch {}
}

// This thread's name in /proc (comm): Node 20 names none of its threads (all show "node"), so top -H, perf and
// the gateway bench's CPU accounting (test/bench/gateway.ts) could not tell it from V8's and libuv's threads.
// /proc/thread-self is the calling thread (Linux ≥ 3.17); writing a sibling thread's comm is allowed. Elsewhere
// nothing changes.
if (typeof workerData.threadName === 'string') {
  try {
    writeFileSync('/proc/thread-self/comm', workerData.threadName);
  } catch {}
}

const poster = createPoster(workerData);
// span records (span-records.ts): the loop's cache tables by id, as they grew, and the request head's pieces
const { resource, scope, reserve, batchSize } = workerData.records;
const pairs = [];
const names = [];
/** output buffers of finished requests, reused (one per request in flight) */
const spareOut = [];

parentPort.on('message', (m) => {
  if (m.rec) {
    for (const p of m.pairs) pairs.push(p);
    for (const n of m.names) names.push(n);
    const out = spareOut.pop() ?? new OutBuffer(Math.min(4 << 20, Math.max(64 << 10, reserve + batchSize * 256)));
    out.pos = reserve;
    encodeRecords(new Int32Array(m.rec.ints), new Float64Array(m.rec.times), new Uint8Array(m.rec.bytes), m.rec.n, pairs, names, out);
    // the records' buffers go back at once, the loop reuses them while this request is out
    parentPort.postMessage({ id: m.id, recBack: { ints: m.rec.ints, times: m.rec.times, bytes: m.rec.bytes } }, [m.rec.ints, m.rec.times, m.rec.bytes]);
    const start = writeHeaderBefore(out.buf, reserve, out.pos - reserve, resource, scope);
    poster.post(out.buf.subarray(start, out.pos), (ok, why) => {
      if (spareOut.length < workerData.maxConcurrentExports) spareOut.push(out);
      parentPort.postMessage({ id: m.id, ok, why });
    });
    return;
  }
  const body = m.ab ? Buffer.from(m.ab, m.start, m.end - m.start) : m.text;
  poster.post(body, (ok, why) => {
    if (m.ab) parentPort.postMessage({ id: m.id, ok, why, ab: m.ab }, [m.ab]);
    else parentPort.postMessage({ id: m.id, ok, why });
  });
});
