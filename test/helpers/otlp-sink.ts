/**
 * A real OTLP/HTTP trace receiver on loopback for tests and benchmarks: accepts `POST /v1/traces` with the
 * OTLP protobuf encoding (`application/x-protobuf`, the OTLP default) or OTLP JSON (`application/json`), gzip
 * or not, decodes every span and answers like a collector (`200`). Other content types are refused with 415,
 * a body that does not decode with 400, so a misconfigured exporter shows up as a counted rejection.
 *
 * With `keep: false` (benchmarks) a protobuf body is only walked to count its spans (tags and lengths, no
 * strings or objects built): a collector's decode cost must not be charged to the host being measured when
 * both share the bench machine's two cores — but it is still a real parse that rejects a malformed body.
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

// ---- OTLP protobuf (opentelemetry-proto trace/v1/trace.proto, common/v1/common.proto) ----

class PbReader {
  pos = 0;
  constructor(
    readonly buf: Buffer,
    readonly end = buf.length,
  ) {}
  varint(): number {
    let r = 0;
    let mul = 1;
    for (let i = 0; i < 10; i++) {
      if (this.pos >= this.end) throw new Error('protobuf: truncated varint');
      const b = this.buf[this.pos++];
      r += (b & 0x7f) * mul;
      if (b < 0x80) return r;
      mul *= 128;
    }
    throw new Error('protobuf: varint too long');
  }
  /** int64 varint, two's complement (a negative takes 10 bytes: decoded with BigInt) */
  int64(): number {
    const start = this.pos;
    const v = this.varint();
    if (this.pos - start < 10) return v;
    let big = 0n;
    for (let i = 9; i >= 0; i--) big = (big << 7n) | BigInt(this.buf[start + i] & 0x7f);
    return Number(BigInt.asIntN(64, big));
  }
  fixed64(): bigint {
    if (this.pos + 8 > this.end) throw new Error('protobuf: truncated fixed64');
    const v = this.buf.readBigUInt64LE(this.pos);
    this.pos += 8;
    return v;
  }
  double(): number {
    if (this.pos + 8 > this.end) throw new Error('protobuf: truncated double');
    const v = this.buf.readDoubleLE(this.pos);
    this.pos += 8;
    return v;
  }
  /** a length-delimited field: returns a reader over it and moves past it */
  sub(): PbReader {
    const len = this.varint();
    if (this.pos + len > this.end) throw new Error('protobuf: length past the end');
    const r = new PbReader(this.buf, this.pos + len);
    r.pos = this.pos;
    this.pos += len;
    return r;
  }
  bytes(): Buffer {
    const r = this.sub();
    return this.buf.subarray(r.pos, r.end);
  }
  string(): string {
    return this.bytes().toString('utf8');
  }
  skip(wireType: number): void {
    if (wireType === 0) this.varint();
    else if (wireType === 1) this.pos += 8;
    else if (wireType === 2) this.sub();
    else if (wireType === 5) this.pos += 4;
    else throw new Error(`protobuf: unsupported wire type ${wireType}`);
    if (this.pos > this.end) throw new Error('protobuf: truncated field');
  }
  *fields(): Generator<[number, number]> {
    while (this.pos < this.end) {
      const tag = this.varint();
      yield [tag >>> 3, tag & 7];
    }
  }
}

function pbAnyValue(r: PbReader): unknown {
  let v: unknown;
  for (const [f, w] of r.fields()) {
    if (f === 1 && w === 2) v = r.string();
    else if (f === 2 && w === 0) v = r.varint() !== 0;
    else if (f === 3 && w === 0) v = r.int64();
    else if (f === 4 && w === 1) v = r.double();
    else if (f === 5 && w === 2) {
      const arr: unknown[] = [];
      const a = r.sub();
      for (const [af, aw] of a.fields()) {
        if (af === 1 && aw === 2) arr.push(pbAnyValue(a.sub()));
        else a.skip(aw);
      }
      v = arr;
    } else if (f === 7 && w === 2) v = r.bytes().toString('base64');
    else r.skip(w);
  }
  return v;
}

function pbKeyValue(r: PbReader, into: Record<string, unknown>): void {
  let key = '';
  let value: unknown;
  for (const [f, w] of r.fields()) {
    if (f === 1 && w === 2) key = r.string();
    else if (f === 2 && w === 2) value = pbAnyValue(r.sub());
    else r.skip(w);
  }
  into[key] = value;
}

function pbSpan(r: PbReader, service: string | undefined): DecodedSpan {
  const s: DecodedSpan = { traceId: '', spanId: '', name: '', kind: 0, startNs: 0n, endNs: 0n, attributes: {}, status: { code: 0 }, service, events: [] };
  for (const [f, w] of r.fields()) {
    if (f === 1 && w === 2) s.traceId = r.bytes().toString('hex');
    else if (f === 2 && w === 2) s.spanId = r.bytes().toString('hex');
    else if (f === 4 && w === 2) {
      const p = r.bytes().toString('hex');
      if (p) s.parentSpanId = p;
    } else if (f === 5 && w === 2) s.name = r.string();
    else if (f === 6 && w === 0) s.kind = r.varint();
    else if (f === 7 && w === 1) s.startNs = r.fixed64();
    else if (f === 8 && w === 1) s.endNs = r.fixed64();
    else if (f === 9 && w === 2) pbKeyValue(r.sub(), s.attributes);
    else if (f === 11 && w === 2) {
      const e = r.sub();
      const ev = { name: '', attributes: {} as Record<string, unknown> };
      for (const [ef, ew] of e.fields()) {
        if (ef === 2 && ew === 2) ev.name = e.string();
        else if (ef === 3 && ew === 2) pbKeyValue(e.sub(), ev.attributes);
        else e.skip(ew);
      }
      s.events.push(ev);
    } else if (f === 15 && w === 2) {
      const st = r.sub();
      for (const [sf, sw] of st.fields()) {
        if (sf === 2 && sw === 2) s.status.message = st.string();
        else if (sf === 3 && sw === 0) s.status.code = st.varint();
        else st.skip(sw);
      }
    } else r.skip(w);
  }
  return s;
}

/**
 * Walks an ExportTraceServiceRequest: `onSpan` gets a reader over each Span message and the resource's
 * service.name (decoded only when `wantService`).
 */
function pbWalk(body: Buffer, onSpan: (r: PbReader, service: string | undefined) => void, wantService: boolean): void {
  const top = new PbReader(body);
  for (const [f, w] of top.fields()) {
    if (f !== 1 || w !== 2) {
      top.skip(w);
      continue;
    }
    const rs = top.sub();
    let service: string | undefined;
    for (const [rf, rw] of rs.fields()) {
      if (rf === 1 && rw === 2 && wantService) {
        const res = rs.sub();
        const attrs: Record<string, unknown> = {};
        for (const [af, aw] of res.fields()) {
          if (af === 1 && aw === 2) pbKeyValue(res.sub(), attrs);
          else res.skip(aw);
        }
        service = attrs['service.name'] as string | undefined;
      } else if (rf === 2 && rw === 2) {
        const ss = rs.sub();
        for (const [sf, sw] of ss.fields()) {
          if (sf === 2 && sw === 2) onSpan(ss.sub(), service);
          else ss.skip(sw);
        }
      } else rs.skip(rw);
    }
  }
}

/** Decodes one OTLP protobuf ExportTraceServiceRequest into flat spans. Throws on a body that is not one. */
export function decodeOtlpProto(body: Buffer): DecodedSpan[] {
  const out: DecodedSpan[] = [];
  pbWalk(body, (r, service) => out.push(pbSpan(r, service)), true);
  return out;
}

/**
 * Counts the spans of an OTLP protobuf body without decoding them (benchmarks): one flat loop over tags and
 * lengths, nothing allocated. Throws on a truncated or malformed body, as a decoder would.
 */
export function countOtlpProto(b: Buffer): number {
  let pos = 0;
  const varint = (): number => {
    let r = 0;
    let mul = 1;
    for (let i = 0; i < 10; i++) {
      if (pos >= b.length) throw new Error('protobuf: truncated varint');
      const x = b[pos++];
      r += (x & 0x7f) * mul;
      if (x < 0x80) return r;
      mul *= 128;
    }
    throw new Error('protobuf: varint too long');
  };
  const skip = (tag: number, end: number) => {
    const w = tag & 7;
    if (w === 0) varint();
    else if (w === 1) pos += 8;
    else if (w === 2) {
      const len = varint();
      pos += len;
    }
    else if (w === 5) pos += 4;
    else throw new Error(`protobuf: unsupported wire type ${w}`);
    if (pos > end) throw new Error('protobuf: field past the end of its message');
  };
  const LEN1 = (1 << 3) | 2;
  const LEN2 = (2 << 3) | 2;
  let n = 0;
  while (pos < b.length) {
    const t = varint();
    if (t !== LEN1) {
      skip(t, b.length);
      continue;
    }
    const rsLen = varint();
    const rsEnd = pos + rsLen;
    if (rsEnd > b.length) throw new Error('protobuf: ResourceSpans past the end');
    while (pos < rsEnd) {
      const rt = varint();
      if (rt !== LEN2) {
        skip(rt, rsEnd);
        continue;
      }
      const ssLen = varint();
      const ssEnd = pos + ssLen;
      if (ssEnd > rsEnd) throw new Error('protobuf: ScopeSpans past the end');
      while (pos < ssEnd) {
        const st = varint();
        if (st === LEN2) n++;
        skip(st, ssEnd);
      }
    }
  }
  return n;
}

/**
 * The request body (gunzipped/inflated when so encoded). With a content-length (what exporters send) the chunks
 * are copied straight into one buffer of that size: no async iterator, no list, no concat — the receiver's own
 * overhead per batch stays small next to the host being measured.
 */
function readBody(req: IncomingMessage): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const len = Number(req.headers['content-length']);
    const known = Number.isSafeInteger(len) && len >= 0 && len <= MAX_BODY_BYTES;
    const buf = known ? Buffer.allocUnsafe(len) : undefined;
    const chunks: Buffer[] = [];
    let got = 0;
    req.on('data', (c: Buffer) => {
      if (buf) {
        if (got + c.length > buf.length) return req.destroy(new Error('body longer than its content-length'));
        c.copy(buf, got);
      } else chunks.push(c);
      got += c.length;
    });
    req.on('error', reject);
    req.on('end', () => {
      if (buf && got !== buf.length) return reject(new Error('body shorter than its content-length'));
      const raw = buf ?? Buffer.concat(chunks);
      const enc = (req.headers['content-encoding'] ?? '').toLowerCase();
      try {
        resolve(enc === 'gzip' ? gunzipSync(raw) : enc === 'deflate' ? inflateSync(raw) : raw);
      } catch (e) {
        reject(e);
      }
    });
  });
}

/** bodies above this are read chunk by chunk (a collector's default limit is of this order: 20 MiB) */
const MAX_BODY_BYTES = 20 * 1024 * 1024;

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
        const proto = type.startsWith('application/x-protobuf');
        if (!proto && !type.startsWith('application/json')) {
          rejected++;
          res.writeHead(415, { 'content-type': 'application/json' }).end('{"message":"OTLP protobuf or JSON only"}');
          return;
        }
        let n: number;
        try {
          if (proto) {
            if (keep) {
              const spans = decodeOtlpProto(body);
              for (const s of spans) store.push(s);
              n = spans.length;
            } else {
              n = countOtlpProto(body);
            }
          } else {
            const parsed = JSON.parse(body.toString('utf8')) as unknown;
            if (keep) {
              const spans = decodeOtlpJson(parsed);
              for (const s of spans) store.push(s);
              n = spans.length;
            } else {
              // counting only (benchmarks): parse like a collector must, skip building DecodedSpan objects
              n = countSpans(parsed);
            }
          }
        } catch (e) {
          rejected++;
          res.writeHead(400, { 'content-type': 'application/json' }).end(JSON.stringify({ message: (e as Error).message }));
          return;
        }
        requests++;
        spanCount += n;
        // an empty ExportTraceServiceResponse in the request's encoding
        if (proto) res.writeHead(200, { 'content-type': 'application/x-protobuf', 'content-length': 0 }).end();
        else res.writeHead(200, { 'content-type': 'application/json' }).end('{}');
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
    env: { OTEL_EXPORTER_OTLP_ENDPOINT: url },
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
    env: { OTEL_EXPORTER_OTLP_ENDPOINT: url },
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
