/**
 * A real OTLP/HTTP trace receiver on loopback for tests and benchmarks: accepts `POST /v1/traces` with the
 * OTLP JSON encoding (what @opentelemetry/exporter-trace-otlp-http sends; gzip or not), decodes every span
 * and answers like a collector (`200 {}`). Protobuf bodies are refused with 415, so a misconfigured exporter
 * shows up as missing spans plus a counted rejection rather than silently.
 *
 * @example
 * const sink = await startOtlpSink();
 * const host = spawn('node', [...], { env: { ...process.env, ...sink.env } });
 * const spans = await sink.waitFor((all) => all.filter((s) => s.traceId === id).length >= 8, 10_000);
 * await sink.close();
 */
import { fork } from 'node:child_process';
import { createServer, type IncomingMessage, type Server } from 'node:http';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { gunzipSync, inflateSync } from 'node:zlib';

export interface DecodedSpan {
  traceId: string;
  spanId: string;
  /** undefined for a root span */
  parentSpanId?: string;
  name: string;
  /** OTLP enum: 1 internal, 2 server, 3 client, 4 producer, 5 consumer (0 unspecified) */
  kind: number;
  startNs: bigint;
  endNs: bigint;
  attributes: Record<string, unknown>;
  /** OTLP status code: 0 unset, 1 ok, 2 error */
  status: { code: number; message?: string };
  /** resource `service.name` */
  service?: string;
  events: Array<{ name: string; attributes: Record<string, unknown> }>;
}

export interface OtlpSink {
  /** base URL, e.g. http://127.0.0.1:43117 (the exporter appends /v1/traces) */
  readonly url: string;
  /** env that turns tracing on in a host pointed at this sink */
  readonly env: Record<string, string>;
  /** spans received so far (empty when started with keep: false) */
  spans(): DecodedSpan[];
  /** spans received so far, grouped by trace id */
  traces(): Map<string, DecodedSpan[]>;
  /** how many spans arrived (counted even with keep: false) */
  readonly spanCount: number;
  /** export requests accepted / refused (not JSON, bad body) */
  readonly requests: number;
  readonly rejected: number;
  /** polls until `pred(spans)` holds (or `n` spans arrived); rejects after `timeoutMs` with what it saw */
  waitFor(pred: number | ((spans: DecodedSpan[]) => boolean), timeoutMs?: number): Promise<DecodedSpan[]>;
  clear(): void;
  close(): Promise<void>;
}

export interface OtlpSinkOptions {
  /** keep decoded spans (default true); benchmarks pass false to only count them */
  keep?: boolean;
  port?: number;
}

type AnyValue = {
  stringValue?: string;
  boolValue?: boolean;
  intValue?: string | number;
  doubleValue?: number;
  arrayValue?: { values?: AnyValue[] };
  kvlistValue?: { values?: KeyValue[] };
  bytesValue?: string;
};
type KeyValue = { key: string; value?: AnyValue };

function anyValue(v: AnyValue | undefined): unknown {
  if (!v) return undefined;
  if (v.stringValue !== undefined) return v.stringValue;
  if (v.boolValue !== undefined) return v.boolValue;
  if (v.intValue !== undefined) return Number(v.intValue);
  if (v.doubleValue !== undefined) return v.doubleValue;
  if (v.arrayValue) return (v.arrayValue.values ?? []).map(anyValue);
  if (v.kvlistValue) return attrs(v.kvlistValue.values);
  if (v.bytesValue !== undefined) return v.bytesValue;
  return undefined;
}

function attrs(kvs: KeyValue[] | undefined): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const kv of kvs ?? []) out[kv.key] = anyValue(kv.value);
  return out;
}

/**
 * OTLP JSON ids are hex (OTLP spec, "JSON Protobuf Encoding"); some encoders emit protobuf-JSON base64
 * instead. Normalise both to lowercase hex; an empty id means "none".
 */
function id(v: unknown, bytes: number): string | undefined {
  if (typeof v !== 'string' || v === '') return undefined;
  if (v.length === bytes * 2 && /^[0-9a-fA-F]+$/.test(v)) return v.toLowerCase();
  const b = Buffer.from(v, 'base64');
  return b.length === bytes ? b.toString('hex') : v;
}

function nanos(v: unknown): bigint {
  if (typeof v === 'string' || typeof v === 'number') return BigInt(v);
  if (v && typeof v === 'object' && 'low' in v && 'high' in v) {
    const { low, high } = v as { low: number; high: number };
    return (BigInt(high >>> 0) << 32n) | BigInt(low >>> 0);
  }
  return 0n;
}

/** Decodes one OTLP JSON ExportTraceServiceRequest into flat spans. Throws on a body that is not one. */
export function decodeOtlpJson(body: unknown): DecodedSpan[] {
  if (!body || typeof body !== 'object' || !Array.isArray((body as { resourceSpans?: unknown }).resourceSpans)) {
    throw new Error('not an OTLP ExportTraceServiceRequest (no resourceSpans array)');
  }
  const out: DecodedSpan[] = [];
  for (const rs of (body as { resourceSpans: any[] }).resourceSpans) {
    const service = attrs(rs.resource?.attributes)['service.name'] as string | undefined;
    for (const ss of rs.scopeSpans ?? []) {
      for (const s of ss.spans ?? []) {
        out.push({
          traceId: id(s.traceId, 16) ?? '',
          spanId: id(s.spanId, 8) ?? '',
          parentSpanId: id(s.parentSpanId, 8),
          name: String(s.name),
          kind: Number(s.kind ?? 0),
          startNs: nanos(s.startTimeUnixNano),
          endNs: nanos(s.endTimeUnixNano),
          attributes: attrs(s.attributes),
          status: { code: Number(s.status?.code ?? 0), message: s.status?.message },
          service,
          events: (s.events ?? []).map((e: { name: string; attributes?: KeyValue[] }) => ({ name: e.name, attributes: attrs(e.attributes) })),
        });
      }
    }
  }
  return out;
}

function countSpans(body: unknown): number {
  const rs = (body as { resourceSpans?: unknown })?.resourceSpans;
  if (!Array.isArray(rs)) throw new Error('not an OTLP ExportTraceServiceRequest (no resourceSpans array)');
  let n = 0;
  for (const r of rs as { scopeSpans?: { spans?: unknown[] }[] }[]) for (const ss of r.scopeSpans ?? []) n += ss.spans?.length ?? 0;
  return n;
}

async function readBody(req: IncomingMessage): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const c of req) chunks.push(c as Buffer);
  const raw = Buffer.concat(chunks);
  const enc = (req.headers['content-encoding'] ?? '').toLowerCase();
  if (enc === 'gzip') return gunzipSync(raw);
  if (enc === 'deflate') return inflateSync(raw);
  return raw;
}

/** Starts the receiver on 127.0.0.1 (a free port unless `opts.port`). */
export async function startOtlpSink(opts: OtlpSinkOptions = {}): Promise<OtlpSink> {
  const keep = opts.keep ?? true;
  let store: DecodedSpan[] = [];
  let spanCount = 0;
  let requests = 0;
  let rejected = 0;

  const server: Server = createServer((req, res) => {
    if (req.method !== 'POST' || req.url?.split('?')[0] !== '/v1/traces') {
      res.writeHead(404).end();
      return;
    }
    readBody(req).then(
      (body) => {
        const type = (req.headers['content-type'] ?? '').toLowerCase();
        if (!type.startsWith('application/json')) {
          rejected++;
          res.writeHead(415, { 'content-type': 'application/json' }).end('{"message":"only OTLP JSON is decoded here"}');
          return;
        }
        let n: number;
        try {
          const parsed = JSON.parse(body.toString('utf8')) as unknown;
          if (keep) {
            const spans = decodeOtlpJson(parsed);
            for (const s of spans) store.push(s);
            n = spans.length;
          } else {
            // counting only (benchmarks): parse like a collector must, skip building DecodedSpan objects
            n = countSpans(parsed);
          }
        } catch (e) {
          rejected++;
          res.writeHead(400, { 'content-type': 'application/json' }).end(JSON.stringify({ message: (e as Error).message }));
          return;
        }
        requests++;
        spanCount += n;
        res.writeHead(200, { 'content-type': 'application/json' }).end('{}');
      },
      () => {
        rejected++;
        res.writeHead(400).end();
      },
    );
  });
  server.keepAliveTimeout = 30_000;
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(opts.port ?? 0, '127.0.0.1', () => resolve());
  });
  const port = (server.address() as { port: number }).port;
  const url = `http://127.0.0.1:${port}`;

  return {
    url,
    env: { OTEL_EXPORTER_OTLP_ENDPOINT: url, OTEL_EXPORTER_OTLP_PROTOCOL: 'http/json' },
    spans: () => store.slice(),
    traces: () => {
      const m = new Map<string, DecodedSpan[]>();
      for (const s of store) {
        const l = m.get(s.traceId);
        if (l) l.push(s);
        else m.set(s.traceId, [s]);
      }
      return m;
    },
    get spanCount() {
      return spanCount;
    },
    get requests() {
      return requests;
    },
    get rejected() {
      return rejected;
    },
    async waitFor(pred, timeoutMs = 10_000) {
      const test = typeof pred === 'number' ? () => spanCount >= pred : () => pred(store);
      const deadline = Date.now() + timeoutMs;
      while (!test()) {
        if (Date.now() > deadline) {
          const names = store.map((s) => s.name).join(', ');
          throw new Error(`OTLP sink: condition not met within ${timeoutMs} ms; ${spanCount} spans received: [${names}]`);
        }
        await new Promise((r) => setTimeout(r, 20));
      }
      return store.slice();
    },
    clear() {
      store = [];
    },
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}

export interface OtlpSinkStats {
  spanCount: number;
  requests: number;
  rejected: number;
}

export interface OtlpSinkProcess {
  readonly url: string;
  /** the receiver's process id (benchmarks read its CPU time) */
  readonly pid: number;
  readonly env: Record<string, string>;
  stats(): Promise<OtlpSinkStats>;
  /** polls until at least `n` spans arrived; rejects after `timeoutMs` */
  waitFor(n: number, timeoutMs?: number): Promise<OtlpSinkStats>;
  close(): Promise<void>;
}

/**
 * The same receiver (counting only) in a child process, like a collector on loopback would be: benchmarks use
 * it so that decoding spans does not compete with the load generator's event loop in the bench process.
 *
 * @example
 * const sink = await startOtlpSinkProcess();
 * const host = spawn(..., { env: { ...process.env, ...sink.env } });
 * ... load ...
 * const { spanCount } = await sink.waitFor(1);
 * await sink.close();
 */
export async function startOtlpSinkProcess(): Promise<OtlpSinkProcess> {
  const child = fork(fileURLToPath(import.meta.url), ['--serve'], {
    execArgv: ['--import', 'tsx'],
    stdio: ['ignore', 'ignore', 'inherit', 'ipc'],
  });
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  let seq = 0;
  const pending = new Map<number, (s: OtlpSinkStats) => void>();
  const url = await new Promise<string>((resolve, reject) => {
    child.once('error', reject);
    child.once('exit', (code) => reject(new Error(`OTLP sink process exited (${code}) before listening`)));
    child.on('message', (m: { url?: string; id?: number; stats?: OtlpSinkStats }) => {
      if (m.url) resolve(m.url);
      else if (m.id !== undefined && m.stats) {
        pending.get(m.id)?.(m.stats);
        pending.delete(m.id);
      }
    });
  });
  const stats = () =>
    new Promise<OtlpSinkStats>((resolve) => {
      const id = ++seq;
      pending.set(id, resolve);
      child.send({ id });
    });
  return {
    url,
    pid: child.pid!,
    env: { OTEL_EXPORTER_OTLP_ENDPOINT: url, OTEL_EXPORTER_OTLP_PROTOCOL: 'http/json' },
    stats,
    async waitFor(n, timeoutMs = 10_000) {
      const deadline = Date.now() + timeoutMs;
      for (;;) {
        const s = await stats();
        if (s.spanCount >= n) return s;
        if (Date.now() > deadline) throw new Error(`OTLP sink process: ${s.spanCount} of ${n} spans within ${timeoutMs} ms`);
        await new Promise((r) => setTimeout(r, 50));
      }
    },
    async close() {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
      await exited;
    },
  };
}

// Child side of startOtlpSinkProcess().
if (process.argv.includes('--serve') && process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href && process.send) {
  const sink = await startOtlpSink({ keep: false });
  process.on('message', (m: { id: number }) =>
    process.send!({ id: m.id, stats: { spanCount: sink.spanCount, requests: sink.requests, rejected: sink.rejected } }),
  );
  process.on('SIGTERM', () => void sink.close().then(() => process.exit(0)));
  process.on('disconnect', () => void sink.close().then(() => process.exit(0)));
  process.send({ url: sink.url });
}
