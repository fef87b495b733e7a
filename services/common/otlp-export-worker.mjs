// The OTLP export thread of services/common/tracing-setup.ts (plain JS: a worker thread does not inherit
// the tsx loader in every launcher, vitest included). It receives finished spans in the compact shape of
// `toWire()` in tracing-setup.ts, rebuilds the ReadableSpan fields the OTLP transformer reads, and exports
// them with the stock OTLPTraceExporter (which reads the OTEL_EXPORTER_OTLP_* env of this thread, a copy
// of the host's at spawn time). Serialising and sending spans here keeps that CPU off the event loop that
// serves invocations.
//
// Messages in:  {op:'export', id, spans: WireSpan[]} | {op:'flush', id} | {op:'shutdown', id}
// Messages out: {id, code: 0|1, error?: string}   (code: ExportResultCode SUCCESS=0 / FAILED=1)
import { parentPort, workerData } from 'node:worker_threads';
import { OTLPTraceExporter } from '@opentelemetry/exporter-trace-otlp-http';
import { resourceFromAttributes } from '@opentelemetry/resources';

const resource = resourceFromAttributes(workerData.resource);
const scope = workerData.scope;
const exporter = new OTLPTraceExporter();

// WireSpan = [traceId, spanId, traceFlags, parentSpanId|'', parentIsRemote, name, kind,
//             startTime, endTime, attributes, droppedAttributesCount, statusCode, statusMessage,
//             events|0, links|0, droppedEventsCount, droppedLinksCount]
function fromWire(w) {
  const ctx = { traceId: w[0], spanId: w[1], traceFlags: w[2] };
  return {
    name: w[5],
    kind: w[6],
    spanContext: () => ctx,
    parentSpanContext: w[3] ? { traceId: w[0], spanId: w[3], traceFlags: w[2], isRemote: w[4] } : undefined,
    startTime: w[7],
    endTime: w[8],
    attributes: w[9],
    droppedAttributesCount: w[10],
    status: { code: w[11], message: w[12] },
    events: w[13] || [],
    links: w[14] || [],
    droppedEventsCount: w[15],
    droppedLinksCount: w[16],
    duration: [0, 0],
    ended: true,
    resource,
    instrumentationScope: scope,
  };
}

parentPort.on('message', (msg) => {
  const reply = (code, error) => parentPort.postMessage({ id: msg.id, code, error });
  if (msg.op === 'export') {
    exporter.export(msg.spans.map(fromWire), (r) => reply(r.code, r.error ? String(r.error.message ?? r.error) : undefined));
  } else if (msg.op === 'flush') {
    exporter.forceFlush().then(() => reply(0), (e) => reply(1, String(e)));
  } else if (msg.op === 'shutdown') {
    exporter.shutdown().then(() => reply(0), (e) => reply(1, String(e)));
  }
});
