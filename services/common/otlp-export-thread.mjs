// The OTLP export thread (services/common/trace-export.ts): gets `{ id, ab, start, end }` (a sealed protobuf
// batch: the writer's whole ArrayBuffer, transferred) or `{ id, text }` (a JSON batch), POSTs it with the same
// poster the loop uses in-thread, and answers `{ id, ok, why, ab }`, handing the buffer back (transferred
// again) so the loop reuses it. Plain JS: see otlp-post.mjs.
import { parentPort, workerData } from 'node:worker_threads';
import { createPoster } from './otlp-post.mjs';

const poster = createPoster(workerData);
parentPort.on('message', (m) => {
  const body = m.ab ? Buffer.from(m.ab, m.start, m.end - m.start) : m.text;
  poster.post(body, (ok, why) => {
    if (m.ab) parentPort.postMessage({ id: m.id, ok, why, ab: m.ab }, [m.ab]);
    else parentPort.postMessage({ id: m.id, ok, why });
  });
});
