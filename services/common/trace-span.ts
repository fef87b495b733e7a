/**
 * @module trace-span
 * fnhost's own span: a plain record implementing @opentelemetry/api's `Span` (so every caller, and any
 * library calling the API, sees the standard interface) and the fields of the SDK's `ReadableSpan` (so an SDK
 * `SpanExporter` — tests' InMemorySpanExporter — plugs in unchanged).
 *
 * Why not the SDK's span: on the warm path (7 spans per invocation, budget ≈ 20 µs per invocation in all, see
 * tracing-setup.ts) the SDK's per-span work (hrtime arrays, attribute limits and copies, span processor fan-out,
 * then a second object graph for OTLP JSON) cost ~12 µs per span measured here. This span keeps start/end as
 * epoch-ms floats, takes the caller's attribute object as is (copied only if set after creation), and hands
 * itself to one `SpanSink` on `end()`, which records or encodes it at once (trace-export.ts) so it dies young.
 *
 * Ids come from a pool of crypto-random bytes refilled 16 KiB at a time (one `randomFillSync` per ~1,200 spans
 * instead of a crypto call per id); trace ids stay fully random, as W3C Trace Context level 2 recommends and the
 * trace-id-ratio sampler needs.
 */
import { randomFillSync } from 'node:crypto';
import { performance } from 'node:perf_hooks';
import {
  SpanKind,
  SpanStatusCode,
  TraceFlags,
  type Attributes,
  type AttributeValue,
  type Exception,
  type Link,
  type Span,
  type SpanContext,
  type SpanStatus,
  type TimeInput,
} from '@opentelemetry/api';

/** Where finished, sampled spans go (the exporter's batcher). */
export interface SpanSink {
  onEnd(span: FnSpan): void;
  /**
   * Optional: takes an already ended child of `parent` (a known interval, attributes `vals` by `schema`'s keys,
   * a span id of its own drawn by the sink) without a span object. False: not taken — hand over a span instead.
   */
  onEndChild?(parent: FnSpan, schema: SpanSchema, vals: SpanValues | undefined, startMs: number, endMs: number): boolean;
}

export interface SpanEvent {
  name: string;
  /** epoch ms */
  timeMs: number;
  attributes?: Attributes;
}

// ---- ids ----

/**
 * A trace id as four big-endian 32-bit words (the byte order of its hex form), shared by every span of the
 * trace in this process; the hex string is built only when someone asks (traceparent, logs, tests).
 *
 * Words (here and the span ids of FnSpan/UnsampledSpan) are SIGNED int32: V8 keeps those as small integers
 * in the object itself, while a uint32 ≥ 2³¹ would be a separately allocated heap number (half of all
 * random words) and flip the field's representation between objects. Every consumer reads them through
 * `>>>` (hex, protobuf bytes, the ratio sampler), which sees the same 32 bits either way.
 */
export class TraceIdWords {
  private hexCache: string | undefined;
  constructor(
    readonly a: number,
    readonly b: number,
    readonly c: number,
    readonly d: number,
    hex?: string,
  ) {
    this.hexCache = hex;
  }
  get hex(): string {
    return (this.hexCache ??= hex8(this.a) + hex8(this.b) + hex8(this.c) + hex8(this.d));
  }
  static fromHex(h: string): TraceIdWords {
    return new TraceIdWords(parseInt(h.slice(0, 8), 16) | 0, parseInt(h.slice(8, 16), 16) | 0, parseInt(h.slice(16, 24), 16) | 0, parseInt(h.slice(24, 32), 16) | 0, h);
  }
}

/** scratch for FnSpan.traceparent(): "00-" + 32 + "-" + 16 + "-01" */
const TP_BUF = Buffer.from('00-00000000000000000000000000000000-0000000000000000-01', 'latin1');
const HEX_CHARS = Buffer.from('0123456789abcdef', 'latin1');

/** 8 lowercase hex characters of a 32-bit word into `b` at `off` */
function hexInto(b: Buffer, off: number, n: number): void {
  for (let i = 7; i >= 0; i--) {
    b[off + i] = HEX_CHARS[n & 0xf]!;
    n >>>= 4;
  }
}

export function hex8(n: number): string {
  return (n >>> 0).toString(16).padStart(8, '0');
}

/**
 * 16 KiB of randomness per refill: one `randomFillSync` (a getrandom syscall) per ~1,200 spans instead of a
 * crypto call per id. A warm invocation takes 14 words (a trace id and five span ids); with 4 KiB the refill
 * showed at ~1 µs per invocation in profiles at ~3,500 invocations/s, mostly the syscall's fixed cost.
 */
const POOL_WORDS = 4096;
const pool = new Int32Array(POOL_WORDS);
let poolIdx = POOL_WORDS;

/** a random 32-bit word (signed int32: see TraceIdWords) */
export function randomWord(): number {
  if (poolIdx === POOL_WORDS) {
    randomFillSync(pool);
    poolIdx = 0;
  }
  return pool[poolIdx++]!;
}

/** A fresh random trace id (all-zero is invalid, W3C Trace Context §3.2.2.3: astronomically rare, never emitted). */
export function newTraceIdWords(): TraceIdWords {
  const t = new TraceIdWords(randomWord(), randomWord(), randomWord(), randomWord());
  return t.a | t.b | t.c | t.d ? t : newTraceIdWords();
}

export const newTraceId = (): string => newTraceIdWords().hex;
/** The span id drawSpanId() drew last, as two words (never both zero: W3C's invalid span id). */
let idHi = 0;
let idLo = 0;
/** Draws a span id into idHi / idLo: two words rather than an object, on every span start. */
function drawSpanId(): void {
  do {
    idHi = randomWord();
    idLo = randomWord();
  } while (idHi === 0 && idLo === 0);
}

/**
 * Draws a span id for a span that has no object (span-records.ts writeChildRecord); read it with `drawnHi()` /
 * `drawnLo()` before the next draw.
 */
export function drawSpanIdWords(): void {
  drawSpanId();
}
export const drawnHi = (): number => idHi;
export const drawnLo = (): number => idLo;

export function newSpanId(): string {
  drawSpanId();
  return hex8(idHi) + hex8(idLo);
}

// ---- time ----

/**
 * Epoch milliseconds with sub-millisecond resolution (performance.now() on the wall-clock origin). `performance`
 * is imported, not the global: the global is a lazy accessor on globalThis, a getter call on every read (it
 * showed in profiles of the span pipeline).
 */
export function nowMs(): number {
  return TIME_ORIGIN + performance.now();
}
/** read once: `performance.timeOrigin` is a getter into C++ */
const TIME_ORIGIN = performance.timeOrigin;

function toMs(t: TimeInput | undefined): number {
  if (t === undefined) return nowMs();
  if (typeof t === 'number') {
    // the API allows performance.now()-style values as well as epoch ms (the SDK tells them apart the same way)
    return t < TIME_ORIGIN / 2 ? TIME_ORIGIN + t : t;
  }
  if (t instanceof Date) return t.getTime();
  return t[0] * 1e3 + t[1] / 1e6;
}

function hr(ms: number): [number, number] {
  const s = Math.floor(ms / 1e3);
  return [s, Math.round((ms - s * 1e3) * 1e6)];
}

// ---- span schemas ----

/** A span's attribute values by the positions of its schema's keys (undefined: not set, not exported). */
export type SpanValues = (AttributeValue | undefined)[];

/**
 * The fixed shape of the spans one call site makes: name, kind and attribute keys, declared once (module level).
 * Its spans carry their attribute values by position (`SpanValues`) instead of an object keyed by name, so ending
 * one writes its attributes by index: no walk over an object's keys, no look-up by key string. The schema also
 * keeps what the encoder learnt about its spans — their name+kind id and, per key, the value seen last and the id
 * of that pair's cached bytes (span-records.ts) — next to each other, so a warm call's spans touch a few cache
 * lines there instead of a hash table entry per attribute (the per-attribute Map look-ups were the biggest part
 * of writing a span record in the host, where caches are cold).
 *
 * @example
 * const RUN = new SpanSchema('run', SpanKind.INTERNAL, [Attr.tenant, Attr.outcome]);
 * const OUTCOME = RUN.slot(Attr.outcome);
 * const values: SpanValues = [tenant, undefined];
 * const span = startSpanOf(RUN, values, parent);  // services/common/telemetry.ts
 * values[OUTCOME] = 'success';                       // a plain store, read when the span ends
 * span.end();
 */
export class SpanSchema {
  readonly keys: readonly string[];
  /** @internal span-records.ts: the name+kind id (otlp-encode.ts nameKindId), -2 until first used */
  nk = -2;
  /** @internal span-records.ts: per key, the value recorded last and its pair id (-1: not cached) */
  readonly lastValue: SpanValues;
  readonly lastId: number[];
  /** @internal span-records.ts: per key, its encoded bytes ([tag 1, length, key]) once needed */
  readonly keyBytes: (Uint8Array | undefined)[];
  constructor(
    readonly name: string,
    readonly kind: SpanKind,
    keys: readonly string[],
  ) {
    if (new Set(keys).size !== keys.length) throw new Error(`span schema '${name}': a key is listed twice`);
    this.keys = [...keys];
    this.lastValue = keys.map(() => undefined);
    this.lastId = keys.map(() => -1);
    this.keyBytes = keys.map(() => undefined);
  }
  /** the position of `key` in the values (throws for a key the schema does not have: a programming error) */
  slot(key: string): number {
    const i = this.keys.indexOf(key);
    if (i < 0) throw new Error(`span schema '${this.name}' has no attribute '${key}'`);
    return i;
  }
}

// ---- the span ----

const EMPTY: Attributes = Object.freeze({}) as Attributes;
/** the values of a recorded span that has none (never written to: recorded spans are ended) */
const EMPTY_VALUES: SpanValues = Object.freeze([]) as unknown as SpanValues;
/** shared by every span until setStatus replaces it (one allocation less per span) */
const UNSET_STATUS: SpanStatus = Object.freeze({ code: SpanStatusCode.UNSET });

/** What a span hangs under: one of our spans (ids as words, no hex) or a span context from elsewhere. */
export type ParentRef = FnSpan | UnsampledSpan | SpanContext | undefined;

/**
 * A span the sampler said no to: records nothing, but carries its ids (as words: no hex unless someone asks)
 * and sampled=0, so children and traceparents downstream keep the decision. Costs one small object.
 */
export class UnsampledSpan implements Span {
  readonly hi: number;
  readonly lo: number;
  private sc: SpanContext | undefined;
  constructor(readonly tid: TraceIdWords) {
    drawSpanId();
    this.hi = idHi;
    this.lo = idLo;
  }
  spanContext(): SpanContext {
    return (this.sc ??= { traceId: this.tid.hex, spanId: hex8(this.hi) + hex8(this.lo), traceFlags: TraceFlags.NONE });
  }
  setAttribute(): this {
    return this;
  }
  setAttributes(): this {
    return this;
  }
  addEvent(): this {
    return this;
  }
  addLink(): this {
    return this;
  }
  addLinks(): this {
    return this;
  }
  setStatus(): this {
    return this;
  }
  updateName(): this {
    return this;
  }
  end(): void {}
  isRecording(): boolean {
    return false;
  }
  recordException(): void {}
}

let unpublish: (span: FnSpan) => void = () => {};
/** @internal telemetry.ts: what end() calls for a span whose traceparent it holds (see `FnSpan.published`) */
export function setUnpublish(f: (span: FnSpan) => void): void {
  unpublish = f;
}

/**
 * A span's first attribute set after creation, in an array with room for three: `[]` and a push reserve 17
 * slots (~200 bytes measured with --expose-gc), while the fnhost spans that get such attributes get one to three
 * (http request: invocation id, route, status; local dispatch: start kind, sandbox, outcome): ~96 bytes. A
 * fourth pair grows it the usual way.
 */
function newExtra(key: string, value: AttributeValue): (string | AttributeValue)[] {
  const x: (string | AttributeValue)[] = [key, value, '', '', '', ''];
  x.length = 2;
  return x;
}

const F_PARENT_REMOTE = 1;
const F_OWN_BASE = 2;
const F_ENDED = 4;
const F_PUBLISHED = 8;

/** What few spans carry, in one object made on first use (FnSpan.rare). */
interface RareParts {
  events: SpanEvent[] | undefined;
  links: Link[] | undefined;
  sc: SpanContext | undefined;
  /** the traceparent, once built (only spans whose context leaves the process need one) */
  tp: string | undefined;
}

/** A recording span. Created by the tracer (tracing-setup.ts) only when the sampler says so. */
export class FnSpan implements Span {
  /** trace id words (shared with the parent when it is ours) */
  readonly tid: TraceIdWords;
  /**
   * The same trace id words, copied into the span: writing its record at end() (span-records.ts) then reads this
   * object only. In the host, where caches are cold by the time a span ends, the second object was a miss per span.
   */
  readonly ta: number;
  readonly tb: number;
  readonly tc: number;
  readonly td: number;
  /** span id, big-endian words */
  readonly hi: number;
  readonly lo: number;
  /** parent span id words; both 0 = a root span */
  readonly phi: number;
  readonly plo: number;
  name: string;
  readonly kind: SpanKind;
  readonly startMs: number;
  endMs = 0;
  /**
   * The attributes given at creation: the caller's object, taken as is (not copied) and read when the span
   * ends. The caller may fill in, by plain stores until end(), keys it declared in the literal as `undefined`
   * (not exported while undefined): a late attribute without a setAttribute call or a second list. It must not
   * add other keys, nor mix the two ways for one key (setAttribute on a creation key switches the span to its
   * own copy, after which stores into the caller's object are not seen).
   */
  base: Attributes;
  /**
   * A span of a call site's SpanSchema: its attribute values by the schema's key positions (`base` is then empty).
   * Like `base`, the caller's array, read when the span ends: the caller fills in positions by plain stores until
   * end(); setAttribute on a schema key stores into it too.
   */
  schema: SpanSchema | undefined;
  vals: SpanValues | undefined;
  /**
   * Attributes set after creation, as flat [key, value, key, value, …]: adding keys to the caller's object
   * would copy it and push it into V8's slow dictionary mode (measured: +1.7 µs per span for two setAttribute
   * calls, and slower encoding); a small array costs nothing of the sort.
   */
  extra: (string | AttributeValue)[] | undefined;
  status: SpanStatus = UNSET_STATUS;
  private readonly sink: SpanSink;
  /**
   * The booleans in one small integer (F_*), and what few spans have (events, links, the SpanContext object, the
   * traceparent) in one slot allocated on first use: every in-object field is 8 bytes on Node's V8 (no pointer
   * compression), and a warm invocation makes several spans — 21 fields were 192 bytes a span, these 17 are 160.
   */
  private f = 0;
  private x: RareParts | undefined;
  constructor(
    sink: SpanSink,
    name: string,
    kind: SpanKind,
    tid: TraceIdWords,
    parent: ParentRef,
    attrs: Attributes | undefined,
    startMs: number,
    schema?: SpanSchema,
    vals?: SpanValues,
  ) {
    this.sink = sink;
    this.name = name;
    this.kind = kind;
    this.tid = tid;
    if (parent instanceof FnSpan) {
      // the parent was just used by the caller: its copy is at hand, `tid` may not be
      this.ta = parent.ta;
      this.tb = parent.tb;
      this.tc = parent.tc;
      this.td = parent.td;
    } else {
      this.ta = tid.a;
      this.tb = tid.b;
      this.tc = tid.c;
      this.td = tid.d;
    }
    drawSpanId();
    this.hi = idHi;
    this.lo = idLo;
    if (parent instanceof FnSpan || parent instanceof UnsampledSpan) {
      this.phi = parent.hi;
      this.plo = parent.lo;
    } else if (parent) {
      this.phi = parseInt(parent.spanId.slice(0, 8), 16) | 0;
      this.plo = parseInt(parent.spanId.slice(8, 16), 16) | 0;
      if (parent.isRemote) this.f = F_PARENT_REMOTE;
    } else {
      this.phi = 0;
      this.plo = 0;
    }
    // a schema span's attributes are its values only (span-records.ts writes no `base` for it)
    this.base = schema === undefined && attrs !== undefined ? attrs : EMPTY;
    this.schema = schema;
    this.vals = schema ? (vals ?? (schema.keys.length ? [] : EMPTY_VALUES)) : undefined;
    this.startMs = startMs;
  }

  /**
   * @internal tracing-setup.ts: makes this object stand for a new, already ended span of `schema` (a known interval
   * under `parent`) for a sink that copies what it needs in onEnd — one object reused instead of one per
   * recorded span. Ids are drawn afresh.
   */
  reinitEnded(tid: TraceIdWords, parent: FnSpan, schema: SpanSchema, vals: SpanValues | undefined, startMs: number, endMs: number): void {
    const m = this as unknown as { -readonly [K in keyof FnSpan]: FnSpan[K] };
    drawSpanId();
    m.tid = tid;
    m.ta = parent.ta;
    m.tb = parent.tb;
    m.tc = parent.tc;
    m.td = parent.td;
    m.hi = idHi;
    m.lo = idLo;
    m.phi = parent.hi;
    m.plo = parent.lo;
    m.name = schema.name;
    m.kind = schema.kind;
    m.startMs = startMs;
    m.endMs = endMs < startMs ? startMs : endMs;
    m.schema = schema;
    m.vals = vals ?? EMPTY_VALUES;
    this.f = F_ENDED;
  }

  /** the parent came from another process (a traceparent), not a span of ours */
  get parentRemote(): boolean {
    return (this.f & F_PARENT_REMOTE) !== 0;
  }
  get ended(): boolean {
    return (this.f & F_ENDED) !== 0;
  }
  /** true while telemetry.ts's map of handed-out traceparents holds this span (it leaves at end()) */
  get published(): boolean {
    return (this.f & F_PUBLISHED) !== 0;
  }
  set published(v: boolean) {
    this.f = v ? this.f | F_PUBLISHED : this.f & ~F_PUBLISHED;
  }
  get eventList(): SpanEvent[] | undefined {
    return this.x?.events;
  }
  get linkList(): Link[] | undefined {
    return this.x?.links;
  }
  private rare(): RareParts {
    return (this.x ??= { events: undefined, links: undefined, sc: undefined, tp: undefined });
  }

  /** always sampled (an unsampled span is an UnsampledSpan); a getter, not a field: one slot less per span */
  get traceFlags(): TraceFlags {
    return TraceFlags.SAMPLED;
  }
  get hasParent(): boolean {
    return (this.phi | this.plo) !== 0;
  }
  get traceId(): string {
    return this.tid.hex;
  }
  get spanId(): string {
    return hex8(this.hi) + hex8(this.lo);
  }
  /** parent span id in hex ('' for a root) */
  get parentId(): string {
    return this.hasParent ? hex8(this.phi) + hex8(this.plo) : '';
  }

  /** the same object every time (callers must not mutate it, as with the SDK's); hex built on first call */
  spanContext(): SpanContext {
    const r = this.rare();
    if (!r.sc) {
      const tp = this.traceparent();
      // substrings of the traceparent: V8 slices, no copies
      r.sc = { traceId: tp.slice(3, 35), spanId: tp.slice(36, 52), traceFlags: this.traceFlags };
    }
    return r.sc;
  }

  /** W3C `traceparent` of this span (version 00, sampled), built once: 55 characters in one native call */
  traceparent(): string {
    const r = this.rare();
    if (r.tp) return r.tp;
    const b = TP_BUF;
    const t = this.tid;
    hexInto(b, 3, t.a);
    hexInto(b, 11, t.b);
    hexInto(b, 19, t.c);
    hexInto(b, 27, t.d);
    hexInto(b, 36, this.hi);
    hexInto(b, 44, this.lo);
    return (r.tp = b.toString('latin1', 0, 55));
  }

  setAttribute(key: string, value: AttributeValue): this {
    if (this.ended || value === undefined || value === null) return this;
    const sc = this.schema;
    if (sc !== undefined) {
      const i = sc.keys.indexOf(key);
      if (i >= 0) {
        this.vals![i] = value;
        return this;
      }
    } else if (key in this.base) {
      // overriding a creation-time attribute (rare): own a copy first
      if ((this.f & F_OWN_BASE) === 0) {
        this.base = { ...this.base };
        this.f |= F_OWN_BASE;
      }
      this.base[key] = value;
      return this;
    }
    const x = this.extra;
    if (x === undefined) {
      this.extra = newExtra(key, value);
      return this;
    }
    for (let i = 0; i < x.length; i += 2) {
      if (x[i] === key) {
        x[i + 1] = value;
        return this;
      }
    }
    x.push(key, value);
    return this;
  }

  setAttributes(attributes: Attributes): this {
    for (const k in attributes) {
      const v = attributes[k];
      if (v !== undefined && v !== null) this.setAttribute(k, v);
    }
    return this;
  }

  addEvent(name: string, attrsOrTime?: Attributes | TimeInput, time?: TimeInput): this {
    if (this.ended) return this;
    let attributes: Attributes | undefined;
    if (attrsOrTime !== undefined && typeof attrsOrTime === 'object' && !Array.isArray(attrsOrTime) && !(attrsOrTime instanceof Date)) {
      attributes = attrsOrTime as Attributes;
    } else if (attrsOrTime !== undefined) {
      time = attrsOrTime as TimeInput;
    }
    (this.rare().events ??= []).push({ name, timeMs: toMs(time), attributes });
    return this;
  }

  addLink(link: Link): this {
    if (!this.ended) (this.rare().links ??= []).push(link);
    return this;
  }

  addLinks(links: Link[]): this {
    for (const l of links) this.addLink(l);
    return this;
  }

  setStatus(status: SpanStatus): this {
    if (this.ended) return this;
    // OTel spec: Ok is final; Unset never overrides
    if (this.status.code === SpanStatusCode.OK || status.code === SpanStatusCode.UNSET) return this;
    this.status = status.code === SpanStatusCode.ERROR ? { code: status.code, message: status.message } : { code: status.code };
    return this;
  }

  updateName(name: string): this {
    if (!this.ended) this.name = name;
    return this;
  }

  end(endTime?: TimeInput): void {
    const f = this.f;
    if (f & F_ENDED) return;
    this.f = f | F_ENDED;
    const e = toMs(endTime);
    this.endMs = e < this.startMs ? this.startMs : e;
    if (f & F_PUBLISHED) unpublish(this);
    this.sink.onEnd(this);
  }

  /**
   * Ends the span without exporting it: for a span that turned out to stand for nothing (a local dispatch that
   * placed nothing; the call's trace goes on under 'enqueue'). Only for a span nothing was started under.
   */
  discard(): void {
    const f = this.f;
    if (f & F_ENDED) return;
    this.f = f | F_ENDED;
    this.endMs = this.startMs;
    if (f & F_PUBLISHED) unpublish(this);
  }

  isRecording(): boolean {
    return !this.ended;
  }

  recordException(exception: Exception, time?: TimeInput): void {
    const a: Attributes = {};
    if (typeof exception === 'string') {
      a['exception.message'] = exception;
    } else if (exception) {
      const e = exception as { name?: string; message?: string; stack?: string; code?: string | number };
      if (e.code !== undefined) a['exception.type'] = String(e.code);
      else if (e.name) a['exception.type'] = e.name;
      if (e.message) a['exception.message'] = e.message;
      if (e.stack) a['exception.stacktrace'] = e.stack;
    }
    this.addEvent('exception', a, time);
  }

  // ---- ReadableSpan (SDK) view, for SpanExporter plug-ins and tests; not used by the OTLP encoder ----

  get attributes(): Attributes {
    const a: Attributes = {};
    for (const k in this.base) if (this.base[k] !== undefined) a[k] = this.base[k];
    const sc = this.schema;
    if (sc !== undefined) {
      const v = this.vals!;
      for (let i = 0; i < sc.keys.length; i++) if (v[i] !== undefined && v[i] !== null) a[sc.keys[i]!] = v[i];
    }
    if (this.extra) for (let i = 0; i < this.extra.length; i += 2) a[this.extra[i] as string] = this.extra[i + 1] as AttributeValue;
    return a;
  }

  get parentSpanContext(): SpanContext | undefined {
    return this.hasParent ? { traceId: this.traceId, spanId: this.parentId, traceFlags: this.traceFlags, isRemote: this.parentRemote } : undefined;
  }
  get startTime(): [number, number] {
    return hr(this.startMs);
  }
  get endTime(): [number, number] {
    return hr(this.endMs);
  }
  get duration(): [number, number] {
    return hr(this.endMs - this.startMs);
  }
  get links(): Link[] {
    return this.linkList ?? [];
  }
  get droppedAttributesCount(): number {
    return 0;
  }
  get droppedEventsCount(): number {
    return 0;
  }
  get droppedLinksCount(): number {
    return 0;
  }
  /** SDK shape of the events (time as HrTime) */
  get events(): { name: string; time: [number, number]; attributes?: Attributes }[] {
    return (this.eventList ?? []).map((e) => ({ name: e.name, time: hr(e.timeMs), attributes: e.attributes }));
  }
}

// ---- sampling (OTEL_TRACES_SAMPLER, https://opentelemetry.io/docs/specs/otel/configuration/sdk-environment-variables/) ----

/** Decides whether a new span records (and is exported). */
export interface Sampler {
  /** `parentSampled`: the parent's sampled flag, undefined for a root */
  sample(tid: TraceIdWords, parentSampled: boolean | undefined): boolean;
  readonly description: string;
}

/**
 * The trace-id-ratio decision as the JS SDK makes it (XOR of the id's 32-bit words against ratio × 2³²−1), so
 * a mixed fleet (fnhost + SDK-instrumented services) agrees on which traces are kept.
 */
function ratioSampled(t: TraceIdWords, ratio: number): boolean {
  if (ratio >= 1) return true;
  if (ratio <= 0) return false;
  return (t.a ^ t.b ^ t.c ^ t.d) >>> 0 <= Math.floor(ratio * 0xffffffff);
}

/**
 * The sampler named by OTEL_TRACES_SAMPLER / OTEL_TRACES_SAMPLER_ARG; default parentbased_always_on (one trace
 * per invocation, and a caller's sampled=0 honoured). Unknown names fall back to the default, as the spec says.
 */
export function samplerFromEnv(env: NodeJS.ProcessEnv): Sampler {
  const name = (env.OTEL_TRACES_SAMPLER ?? '').trim().toLowerCase() || 'parentbased_always_on';
  const argRaw = Number(env.OTEL_TRACES_SAMPLER_ARG);
  const ratio = Number.isFinite(argRaw) && argRaw >= 0 && argRaw <= 1 && (env.OTEL_TRACES_SAMPLER_ARG ?? '').trim() !== '' ? argRaw : 1;
  const root = (t: TraceIdWords): boolean => {
    switch (name) {
      case 'always_off':
      case 'parentbased_always_off':
        return false;
      case 'traceidratio':
      case 'parentbased_traceidratio':
        return ratioSampled(t, ratio);
      default:
        return true;
    }
  };
  const parentBased = !['always_on', 'always_off', 'traceidratio'].includes(name);
  return {
    description: parentBased ? `${name}${name.endsWith('traceidratio') ? `{${ratio}}` : ''}` : name,
    sample: parentBased ? (t, parentSampled) => (parentSampled === undefined ? root(t) : parentSampled) : (t) => root(t),
  };
}
