/**
 * @module trace-export
 * The span pipeline behind services/common/tracing-setup.ts: each sampled span goes into the current batch the
 * moment it ends, and a batch is POSTed to the collector (OTLP/HTTP, kept-alive connection) when it holds
 * `maxExportBatchSize` spans or `scheduledDelayMillis` after its first span — the BatchSpanProcessor's contract
 * (OTEL_BSP_*), without keeping span objects alive in between. By default an export thread does the rest: the
 * loop writes each span as a fixed-layout record (span-records.ts), the sealed batch's buffers are transferred to
 * the thread, which encodes the OTLP protobuf (otlp-records.mjs), hands the buffers back and POSTs (and gzips).
 * Without the thread (FNHOST_OTEL_EXPORT_THREAD=0, or after it died), with http/json, or with
 * FNHOST_OTEL_ENCODE=loop, spans are encoded on the loop as they end (otlp-encode.ts). See EXPORT_THREAD_URL.
 *
 * Bounded: at most `maxQueueSize` spans wait (encoded, not yet acknowledged by the collector); past that new
 * spans are dropped and counted (`stats().dropped`, and fnhost_trace_spans_dropped_total) rather than growing the
 * heap when the collector is slow or gone. A failed export is counted and not retried (the next batch is
 * already being built; a retry would only add load to a struggling collector).
 */
import { Worker } from 'node:worker_threads';
import { diag, type Attributes } from '@opentelemetry/api';
import { NAME_BYTES, PAIR_BYTES, ProtoBatchHeader, ProtoWriter, jsonBatch, jsonSpan, protoSpan } from './otlp-encode.ts';
import { createPoster, type Poster } from './otlp-post.mjs';
import { SpanRecords, encodeRecordsHere, writeChildRecord, writeSpanRecord } from './span-records.ts';
import type { FnSpan, SpanSchema, SpanSink, SpanValues } from './trace-span.ts';

export interface OtlpHttpConfig {
  /** full traces URL, e.g. http://127.0.0.1:4318/v1/traces */
  url: string;
  protocol: 'http/protobuf' | 'http/json';
  headers: Record<string, string>;
  timeoutMs: number;
  gzip: boolean;
  resource: Attributes;
  scopeName: string;
  maxQueueSize: number;
  maxExportBatchSize: number;
  scheduledDelayMillis: number;
  /** concurrent export requests (a kept-alive connection each) */
  maxConcurrentExports: number;
  /**
   * POST (and gzip) on a worker thread instead of the event loop (default true; FNHOST_OTEL_EXPORT_THREAD=0
   * keeps it in-thread). Sealed batches cross zero-copy (transferred buffers): span records, or spans encoded on
   * the loop (see encodeOnThread).
   */
  exportThread?: boolean;
  /**
   * Nice value of the export thread (FNHOST_OTEL_EXPORT_NICE; null leaves it as inherited). Default
   * DEFAULT_EXPORT_THREAD_NICE: see there.
   */
  exportThreadNice?: number | null;
  /**
   * With the export thread and protobuf: spans leave the loop as records and the thread encodes them
   * (span-records.ts; default true, FNHOST_OTEL_ENCODE=loop encodes on the loop as they end).
   */
  encodeOnThread?: boolean;
}

export interface ExportStats {
  /** spans handed to the collector and acknowledged (2xx) */
  exported: number;
  /** spans dropped because the queue was full */
  dropped: number;
  /** spans lost in failed exports (non-2xx, network error, timeout) */
  failed: number;
  /** export requests sent */
  requests: number;
}

/** Callbacks for the process's metrics (tracing-setup.ts wires them to metrics.ts). */
export interface ExportHooks {
  onDropped?(n: number): void;
  onFailed?(n: number): void;
}

/** Reads the standard OTLP exporter env (OTEL_EXPORTER_OTLP_[TRACES_]*, OTEL_BSP_*). */
export function otlpConfigFromEnv(env: NodeJS.ProcessEnv, resource: Attributes, scopeName: string): OtlpHttpConfig {
  const pick = (k: string) => (env[`OTEL_EXPORTER_OTLP_TRACES_${k}`] ?? '').trim() || (env[`OTEL_EXPORTER_OTLP_${k}`] ?? '').trim();
  const tracesUrl = (env.OTEL_EXPORTER_OTLP_TRACES_ENDPOINT ?? '').trim();
  // The signal path is appended to the generic endpoint only (spec: "Endpoint URLs for OTLP/HTTP").
  const url = tracesUrl || `${(env.OTEL_EXPORTER_OTLP_ENDPOINT ?? '').trim().replace(/\/+$/, '')}/v1/traces`;
  const protocol = pick('PROTOCOL') === 'http/json' ? 'http/json' : 'http/protobuf';
  if (pick('PROTOCOL') && pick('PROTOCOL') !== protocol) diag.warn(`fnhost: OTLP protocol ${pick('PROTOCOL')} is not supported here; using http/protobuf`);
  const headers: Record<string, string> = {};
  // "key1=value1,key2=value2", values URL-encoded (spec: OTEL_EXPORTER_OTLP_HEADERS); signal-specific ones win
  for (const raw of [env.OTEL_EXPORTER_OTLP_HEADERS, env.OTEL_EXPORTER_OTLP_TRACES_HEADERS]) {
    for (const part of (raw ?? '').split(',')) {
      const i = part.indexOf('=');
      if (i <= 0) continue;
      try {
        headers[decodeURIComponent(part.slice(0, i).trim()).toLowerCase()] = decodeURIComponent(part.slice(i + 1).trim());
      } catch {
        diag.warn('fnhost: ignoring a malformed OTLP header entry');
      }
    }
  }
  const num = (v: string | undefined, dflt: number) => {
    const n = Number(v);
    return v !== undefined && v.trim() !== '' && Number.isFinite(n) && n > 0 ? n : dflt;
  };
  const maxQueueSize = num(env.OTEL_BSP_MAX_QUEUE_SIZE, DEFAULT_MAX_QUEUE_SIZE);
  return {
    url,
    protocol,
    headers,
    // spec defaults: 10 s timeout, delay 5000 ms (batch and queue: see DEFAULT_MAX_EXPORT_BATCH_SIZE)
    timeoutMs: num(pick('TIMEOUT') || undefined, 10_000),
    gzip: pick('COMPRESSION') === 'gzip',
    resource,
    scopeName,
    maxQueueSize,
    maxExportBatchSize: Math.min(num(env.OTEL_BSP_MAX_EXPORT_BATCH_SIZE, DEFAULT_MAX_EXPORT_BATCH_SIZE), maxQueueSize),
    scheduledDelayMillis: num(env.OTEL_BSP_SCHEDULE_DELAY, 5000),
    maxConcurrentExports: DEFAULT_CONCURRENT_EXPORTS,
    exportThread: (env.FNHOST_OTEL_EXPORT_THREAD ?? '').trim() !== '0',
    exportThreadNice: exportNiceFromEnv(env.FNHOST_OTEL_EXPORT_NICE),
    encodeOnThread: (env.FNHOST_OTEL_ENCODE ?? '').trim() !== 'loop',
  };
}

/**
 * The export thread's nice value. A thread inherits its creator's: `fnhost start` runs the event loop at nice
 * −10 (services/cli/priority.ts) so that the runtimes it wakes do not preempt it, and the export thread would get
 * that weight too, though nothing waits on it (a batch has up to OTEL_BSP_SCHEDULE_DELAY to go out): at −10 each
 * batch's burst (encode + ~1 MB POST) would take a core from the runtimes and the load generator that the loop's
 * calls wait on; at 0 it shares like any other process. Measured at 32 connections, alternating segments on the
 * 2-core bench machine under other load: no difference beyond the noise (median paired rps +24 % and −4 % in two
 * runs); this is the default on the reasoning above.
 */
export const DEFAULT_EXPORT_THREAD_NICE = 0;

/** FNHOST_OTEL_EXPORT_NICE: -20…19, `inherit` (null: keep the creator's), unset/invalid → the default */
export function exportNiceFromEnv(raw: string | undefined): number | null {
  const v = (raw ?? '').trim();
  if (v === 'inherit') return null;
  if (/^-?[0-9]{1,2}$/.test(v) && Number(v) >= -20 && Number(v) <= 19) return Number(v);
  if (v !== '') diag.warn(`fnhost: FNHOST_OTEL_EXPORT_NICE must be -20…19 or inherit (got ${JSON.stringify(v)}); using ${DEFAULT_EXPORT_THREAD_NICE}`);
  return DEFAULT_EXPORT_THREAD_NICE;
}

/**
 * The export thread (otlp-export-thread.mjs): sealed batches cross to it and it POSTs them with the same poster
 * (otlp-post.mjs) the loop uses in-thread. Why a thread: with the host's loop the bottleneck, everything it does
 * for tracing shows ~1:1 in throughput. A batch POST costs the loop the HTTP client's request/response machinery
 * plus the loopback write itself (TCP on loopback runs the receive side in the sender's syscall): ~128 KB per 512
 * spans. Encoding moved there too (span records): in the host it cost the loop ~5 µs per warm call (5 spans,
 * perf), records cost it ~3; the thread encodes a batch in one tight loop for ~1–2 µs per call.
 */
const EXPORT_THREAD_URL = new URL('./otlp-export-thread.mjs', import.meta.url);

/**
 * The export thread's name in /proc/<pid>/task/<tid>/comm (Linux caps it at 15 bytes): the thread sets it as it
 * starts, so `top -H`, perf and the gateway bench's CPU accounting (test/bench/gateway.ts) can find it among the
 * process's threads, which Node otherwise all names "node".
 */
export const EXPORT_THREAD_NAME = 'otlp-export';

/** A batch handed to the export thread, until it answers. */
interface ThreadJob {
  spans: number;
  writer: ProtoWriter | undefined;
}

/**
 * Spans waiting for the collector, at most (OTEL_BSP_MAX_QUEUE_SIZE when set): the batch being built plus the
 * sealed ones queued or in flight — 4 default batches. The SDK's 2,048 filled in ~250 ms at ~1,000 warm
 * invocations/s × 8 spans (~20 % of spans dropped on the c32 bench then); 32,768 is ~1.6 s of spans at 4,000
 * invocations/s × 5. Encoded, a span is ~240 bytes: ~8 MB of batches held at most, plus up to
 * `maxConcurrentExports` spare batch buffers (~2 MB each) kept for reuse.
 */
const DEFAULT_MAX_QUEUE_SIZE = 32_768;
/**
 * Spans per export request (OTEL_BSP_MAX_EXPORT_BATCH_SIZE when set; the spec's default is 512). A POST costs
 * the sender and the collector a fixed ~0.4–1 ms of CPU each whatever its size (measured on the 2-core bench
 * machine, 32–512 KB bodies one every 25 ms, test/helpers/otlp-sink.ts as the collector). At 4,000 warm
 * invocations/s × 5 spans, 512 per batch is ~40 POSTs per second: ~6 % of a core between the export thread and
 * the collector, on a 2-core host whose event loop is the bottleneck. 8,192 (~2 MB of protobuf, far below a
 * collector's default 20 MiB request limit) makes that ~3 per second. Measured with the export thread alone
 * (real exporter, a warm call's 5 spans at ~4,900 calls/s, the collector process on loopback, 1,024 / 4,096 /
 * 8,192 / 16,384 alternated): the thread's CPU per call is ~2.0 µs plus ~0.8 ms per request (node's HTTP client,
 * run 3–20 times a second, never gets past V8's baseline tier): 5.9 / 2.6 / 2.1 / 2.3 µs per call; the
 * collector's 2.9 µs per call did not change from 4,096 up. A batch is sealed when full or
 * OTEL_BSP_SCHEDULE_DELAY after its first span, whichever comes first, so at low rates nothing waits longer.
 */
const DEFAULT_MAX_EXPORT_BATCH_SIZE = 8192;
/**
 * Exports in flight at once (a kept-alive connection each). One at a time (the SDK's way) makes every batch wait
 * for the previous round trip; 4 lets a collector that answers slowly for a moment (GC, a full pipeline) fall
 * behind by up to 4 batches before the queue bound drops spans, without a connection storm.
 */
const DEFAULT_CONCURRENT_EXPORTS = 4;

/** OTLP/HTTP exporter: a `SpanSink` that batches encoded spans and sends them. */
export class OtlpHttpExporter implements SpanSink {
  private readonly cfg: OtlpHttpConfig;
  private readonly hooks: ExportHooks;
  private proto: ProtoWriter | undefined;
  private json: string[] = [];
  /** spans in the batch being built */
  private count = 0;
  /** spans sealed into batches that are queued or in flight */
  private pendingSpans = 0;
  private readonly queue: { body: Buffer | string | undefined; spans: number; writer?: ProtoWriter; rec?: SpanRecords }[] = [];
  /** the batch being built as span records (encoded by the export thread); undefined: encoded here (`proto`) */
  private rec: SpanRecords | undefined;
  /** record batches back from the thread, reused */
  private readonly spareRecs: SpanRecords[] = [];
  /** how much of PAIR_BYTES / NAME_BYTES the thread has been sent */
  private sentPairs = 0;
  private sentNames = 0;
  /** bytes kept free at the front of each batch writer for the request header (resource + scope + lengths) */
  private readonly reserve: number;
  private readonly header: ProtoBatchHeader;
  /** batch writers back from finished requests, reused (a 64–256 KiB buffer each) */
  private readonly spare: ProtoWriter[] = [];
  private inFlight = 0;
  private timer: NodeJS.Timeout | undefined;
  /** the in-thread POST (also the fallback when the export thread dies) */
  private readonly poster: Poster;
  /** the export thread (undefined: in-thread, by config or after the thread failed) */
  private worker: Worker | undefined;
  private readonly jobs = new Map<number, ThreadJob>();
  private nextJob = 0;
  private readonly idleWaiters: (() => void)[] = [];
  private shut = false;
  readonly stats: ExportStats = { exported: 0, dropped: 0, failed: 0, requests: 0 };
  private warned = false;

  constructor(cfg: OtlpHttpConfig, hooks: ExportHooks = {}) {
    this.cfg = cfg;
    this.hooks = hooks;
    this.poster = createPoster(cfg);
    this.header = new ProtoBatchHeader(cfg.resource, cfg.scopeName);
    this.reserve = this.header.maxLength;
    if (cfg.exportThread !== false) this.startWorker();
    if (cfg.protocol === 'http/protobuf') {
      if (this.worker && cfg.encodeOnThread !== false) this.rec = new SpanRecords(cfg.maxExportBatchSize);
      else this.proto = this.newWriter();
    }
  }

  /** true while spans leave the loop as records that the export thread encodes (span-records.ts) */
  get encodesOnThread(): boolean {
    return this.rec !== undefined;
  }

  /** true while batches are POSTed from the export thread (false: in-thread, by config or after the thread died) */
  get exportThread(): boolean {
    return this.worker !== undefined;
  }

  private startWorker(): void {
    const { url, protocol, headers, timeoutMs, gzip: gz, maxConcurrentExports } = this.cfg;
    const nice = this.cfg.exportThreadNice === undefined ? DEFAULT_EXPORT_THREAD_NICE : this.cfg.exportThreadNice;
    let w: Worker;
    try {
      // a small heap: the thread holds at most maxConcurrentExports batches, which live in transferred buffers
      const records = { resource: this.header.resourceMsg, scope: this.header.scopeMsg, reserve: this.reserve, batchSize: this.cfg.maxExportBatchSize };
      w = new Worker(EXPORT_THREAD_URL, { workerData: { url, protocol, headers, timeoutMs, gzip: gz, maxConcurrentExports, nice, records, threadName: EXPORT_THREAD_NAME }, resourceLimits: { maxOldGenerationSizeMb: 32 } });
    } catch (e) {
      diag.warn(`fnhost: OTLP export thread unavailable (${(e as Error).message}); exporting on the event loop`);
      return;
    }
    // idle, the thread must not keep the process alive; while a batch is out it does (as an in-flight request would)
    w.unref();
    w.on('message', (m: { id: number; ok: boolean; why?: string; ab?: ArrayBuffer; recBack?: { ints: ArrayBuffer; times: ArrayBuffer; bytes: ArrayBuffer } }) => {
      if (m.recBack) {
        // a record batch's buffers, back as soon as the thread has encoded it (its POST answers later)
        if (this.spareRecs.length < this.cfg.maxConcurrentExports) this.spareRecs.push(new SpanRecords(this.cfg.maxExportBatchSize, m.recBack));
        return;
      }
      const job = this.jobs.get(m.id);
      if (!job) return;
      this.jobs.delete(m.id);
      if (job.writer && m.ab) job.writer.buf = Buffer.from(m.ab);
      if (this.jobs.size === 0) w.unref();
      this.done(m.ok, m.why, job.spans, m.ab ? job.writer : undefined);
    });
    w.on('error', (e) => this.workerLost(w, e.message));
    w.on('exit', (code) => this.workerLost(w, `exited with code ${code}`));
    this.worker = w;
  }

  /** the thread died: what it held counts as failed, and exports continue on the loop */
  private workerLost(w: Worker, why: string): void {
    if (this.worker !== w) return;
    this.worker = undefined;
    if (!this.shut) diag.warn(`fnhost: OTLP export thread ${why}; exporting on the event loop`);
    const lost = [...this.jobs.values()];
    this.jobs.clear();
    // the batch being built as records is encoded here and building goes on in protobuf (queued record batches
    // are encoded when they are sent: see send)
    const rec = this.rec;
    this.rec = undefined;
    this.spareRecs.length = 0;
    if (rec) {
      this.proto = this.newWriter();
      encodeRecordsHere(rec, this.proto);
    }
    for (const j of lost) this.done(false, why, j.spans, undefined);
  }

  /** an export finished (either way): counters, hooks, writer back to the spares, next batch */
  private done(ok: boolean, why: string | undefined, spans: number, writer: ProtoWriter | undefined): void {
    this.inFlight--;
    if (writer && this.spare.length < this.cfg.maxConcurrentExports) {
      writer.pos = this.reserve;
      this.spare.push(writer);
    }
    this.pendingSpans -= spans;
    if (ok) this.stats.exported += spans;
    else {
      this.stats.failed += spans;
      this.hooks.onFailed?.(spans);
      if (!this.warned) {
        this.warned = true;
        diag.warn(`fnhost: OTLP export to ${this.cfg.url} failed (${why}); further failures are only counted`);
      }
    }
    this.pump();
  }

  private newWriter(): ProtoWriter {
    // room for a whole batch of typical spans (~240 bytes each) from the start: no doubling and copying as it fills
    const w = new ProtoWriter(Math.min(4 << 20, Math.max(64 << 10, this.reserve + this.cfg.maxExportBatchSize * 256)));
    w.pos = this.reserve;
    return w;
  }

  onEnd(span: FnSpan): void {
    if (this.shut || this.count + this.pendingSpans >= this.cfg.maxQueueSize) {
      this.stats.dropped++;
      this.hooks.onDropped?.(1);
      return;
    }
    if (this.rec) writeSpanRecord(this.rec, span);
    else if (this.proto) protoSpan(this.proto, span);
    else this.json.push(jsonSpan(span));
    this.added();
  }

  /**
   * SpanSink.onEndChild: while spans leave as records, an ended child of `parent` is written straight from the
   * parent's ids (span-records.ts writeChildRecord), with no span object; false when it cannot be (encoding here,
   * or a name past the name cache): the caller then hands over a span.
   */
  onEndChild(parent: FnSpan, schema: SpanSchema, vals: SpanValues | undefined, startMs: number, endMs: number): boolean {
    const rec = this.rec;
    if (rec === undefined) return false;
    if (this.shut || this.count + this.pendingSpans >= this.cfg.maxQueueSize) {
      this.stats.dropped++;
      this.hooks.onDropped?.(1);
      return true;
    }
    if (!writeChildRecord(rec, parent, schema, vals, startMs, endMs)) return false;
    this.added();
    return true;
  }

  /** a span went into the batch being built: seal it when full, else start its delay with its first span */
  private added(): void {
    if (++this.count >= this.cfg.maxExportBatchSize) this.seal();
    else if (this.count === 1) {
      this.timer = setTimeout(() => this.seal(), this.cfg.scheduledDelayMillis);
      this.timer.unref();
    }
  }

  /** closes the batch being built and queues it for sending */
  private seal(): void {
    if (this.timer) {
      clearTimeout(this.timer);
      this.timer = undefined;
    }
    if (this.count === 0) return;
    let body: Buffer | string | undefined;
    let writer: ProtoWriter | undefined;
    let rec: SpanRecords | undefined;
    if (this.rec) {
      rec = this.rec;
      this.rec = this.spareRecs.pop() ?? new SpanRecords(this.cfg.maxExportBatchSize);
      this.rec.reset();
    } else if (this.proto) {
      // The header goes into the room left in front of the spans: one buffer, one socket write, no copy of
      // the spans. The writer goes with the request and comes back to `spare` when it is done (the socket may
      // read from it until then).
      writer = this.proto;
      const start = this.header.writeBefore(writer.buf, this.reserve, writer.pos - this.reserve);
      body = writer.buf.subarray(start, writer.pos);
      this.proto = this.spare.pop() ?? this.newWriter();
    } else {
      body = jsonBatch(this.cfg.resource, this.cfg.scopeName, this.json);
      this.json = [];
    }
    this.queue.push({ body, spans: this.count, writer, rec });
    this.pendingSpans += this.count;
    this.count = 0;
    this.pump();
  }

  private pump(): void {
    while (this.inFlight < this.cfg.maxConcurrentExports && this.queue.length) {
      const b = this.queue.shift()!;
      this.inFlight++;
      this.send(b.body, b.spans, b.writer, b.rec);
    }
    if (this.inFlight === 0 && this.queue.length === 0 && this.count === 0) {
      for (const w of this.idleWaiters.splice(0)) w();
    }
  }

  private send(body: Buffer | string | undefined, spans: number, writer: ProtoWriter | undefined, rec?: SpanRecords): void {
    this.stats.requests++;
    const w = this.worker;
    if (rec && !w) {
      // sealed as records, but the thread is gone: encode here
      writer = this.newWriter();
      encodeRecordsHere(rec, writer);
      const start = this.header.writeBefore(writer.buf, this.reserve, writer.pos - this.reserve);
      body = writer.buf.subarray(start, writer.pos);
    }
    if (w) {
      const id = this.nextJob++;
      if (this.jobs.size === 0) w.ref();
      if (rec) {
        // the records' three buffers move to the thread, with the cache entries it has not seen yet (ids only grow)
        const pairs = PAIR_BYTES.slice(this.sentPairs);
        const names = NAME_BYTES.slice(this.sentNames);
        this.sentPairs += pairs.length;
        this.sentNames += names.length;
        const bufs = rec.buffers();
        this.jobs.set(id, { spans, writer: undefined });
        w.postMessage({ id, rec: { ...bufs, n: rec.n }, pairs, names }, [bufs.ints, bufs.times, bufs.bytes]);
        return;
      }
      if (body === undefined) throw new Error('unreachable: a sealed batch without a body or records');
      if (typeof body === 'string') {
        this.jobs.set(id, { spans, writer: undefined });
        w.postMessage({ id, text: body });
        return;
      }
      // The writer's buffer is its own ArrayBuffer (allocUnsafe above the pool size), moved, not copied; the
      // writer stays out of use until the thread hands the buffer back. A body in a shared pool slab is copied.
      const ab = writer && writer.buf.byteOffset === 0 && writer.buf.buffer.byteLength === writer.buf.length ? (writer.buf.buffer as ArrayBuffer) : undefined;
      if (ab) {
        this.jobs.set(id, { spans, writer });
        w.postMessage({ id, ab, start: body.byteOffset, end: body.byteOffset + body.length }, [ab]);
      } else {
        const copy = new Uint8Array(body);
        this.jobs.set(id, { spans, writer: undefined });
        w.postMessage({ id, ab: copy.buffer, start: 0, end: copy.length }, [copy.buffer]);
      }
      return;
    }
    this.poster.post(body!, (ok, why) => this.done(ok, why, spans, writer));
  }

  /** sends what is buffered and resolves once every export in flight has finished */
  forceFlush(): Promise<void> {
    this.seal();
    if (this.inFlight === 0 && this.queue.length === 0) return Promise.resolve();
    return new Promise((resolve) => this.idleWaiters.push(resolve));
  }

  async shutdown(): Promise<void> {
    await this.forceFlush();
    this.shut = true;
    this.poster.destroy();
    const w = this.worker;
    this.worker = undefined;
    if (w) await w.terminate();
  }
}
