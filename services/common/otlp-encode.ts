/**
 * @module otlp-encode
 * Hand-written OTLP trace encoders, one pass per span straight into the batch being built:
 *  - protobuf (`http/protobuf`, the OTLP default): opentelemetry-proto `collector/trace/v1/trace_service.proto`
 *    ExportTraceServiceRequest, field numbers from `trace/v1/trace.proto` and `common/v1/common.proto` (v1.x);
 *  - JSON (`http/json`): the OTLP/JSON mapping (hex ids, int64 and times as decimal strings, enums as numbers).
 *
 * Why by hand: the stock exporter builds a second object graph per span and then serialises it (~7 µs per span
 * measured here for JSON); writing the wire bytes from the span directly costs ~1 µs, and protobuf is also the
 * cheaper body for the collector to decode. A batch is `header(resource, scope) + spans`, so spans are
 * encoded as they end and the outer lengths are written once when the batch is sealed.
 */
import type { AttributeValue, Attributes, Link } from '@opentelemetry/api';
import type { FnSpan } from './trace-span.ts';
import { putFixed64Ms, writeHeaderBefore } from './otlp-records.mjs';

// ---- protobuf ----

/** A growable byte buffer with the protobuf primitives the trace messages need. */
export class ProtoWriter {
  buf: Buffer;
  pos = 0;

  constructor(initial = 64 * 1024) {
    this.buf = Buffer.allocUnsafe(initial);
  }

  ensure(n: number): void {
    if (this.pos + n <= this.buf.length) return;
    const next = Buffer.allocUnsafe(Math.max(this.buf.length * 2, this.pos + n));
    this.buf.copy(next, 0, 0, this.pos);
    this.buf = next;
  }

  /** unsigned varint of a non-negative safe integer */
  varint(n: number): void {
    this.ensure(10);
    const b = this.buf;
    let p = this.pos;
    while (n > 0x7f) {
      b[p++] = (n % 128) | 0x80;
      n = Math.floor(n / 128);
    }
    b[p++] = n;
    this.pos = p;
  }

  /** int64 varint (two's complement for negatives: 10 bytes) */
  int64(n: number): void {
    if (n >= 0) return this.varint(n);
    let v = BigInt.asUintN(64, BigInt(n));
    this.ensure(10);
    while (v > 0x7fn) {
      this.buf[this.pos++] = Number(v & 0x7fn) | 0x80;
      v >>= 7n;
    }
    this.buf[this.pos++] = Number(v);
  }

  tag(field: number, wireType: number): void {
    this.varint((field << 3) | wireType);
  }

  /** epoch milliseconds (float) → fixed64 nanoseconds, exact to the nanosecond without BigInt (otlp-records.mjs) */
  fixed64Ms(ms: number): void {
    this.ensure(8);
    putFixed64Ms(this.buf, this.pos, ms);
    this.pos += 8;
  }

  /** a length-delimited id from big-endian 32-bit words (8 or 16 bytes) */
  idWords(a: number, b: number, c?: number, d?: number): void {
    this.ensure(17);
    const buf = this.buf;
    let p = this.pos;
    buf[p++] = c === undefined ? 8 : 16;
    buf[p++] = a >>> 24;
    buf[p++] = a >>> 16;
    buf[p++] = a >>> 8;
    buf[p++] = a;
    buf[p++] = b >>> 24;
    buf[p++] = b >>> 16;
    buf[p++] = b >>> 8;
    buf[p++] = b;
    if (c !== undefined) {
      buf[p++] = c >>> 24;
      buf[p++] = c >>> 16;
      buf[p++] = c >>> 8;
      buf[p++] = c;
      buf[p++] = d! >>> 24;
      buf[p++] = d! >>> 16;
      buf[p++] = d! >>> 8;
      buf[p++] = d!;
    }
    this.pos = p;
  }

  /**
   * raw bytes (cached attribute pairs, names: 10–60 bytes). TypedArray#set, not a JS byte loop: measured ~17 %
   * less for creating and encoding a warm invocation's 5 spans (3.0 vs 3.6 µs per invocation).
   */
  raw(src: Uint8Array): void {
    const n = src.length;
    this.ensure(n);
    this.buf.set(src, this.pos);
    this.pos += n;
  }

  double(v: number): void {
    this.ensure(8);
    this.buf.writeDoubleLE(v, this.pos);
    this.pos += 8;
  }

  fixed32(v: number): void {
    this.ensure(4);
    // byte stores, not Buffer#writeUInt32LE (its argument checks showed in profiles: one call per span)
    const b = this.buf;
    const p = this.pos;
    b[p] = v;
    b[p + 1] = v >>> 8;
    b[p + 2] = v >>> 16;
    b[p + 3] = v >>> 24;
    this.pos = p + 4;
  }

  /** length-delimited UTF-8 string */
  string(s: string): void {
    const n = s.length;
    if (n < 128) {
      // fast path: short ASCII, one length byte
      this.ensure(n + 1);
      const b = this.buf;
      const start = this.pos;
      let p = start + 1;
      for (let i = 0; i < n; i++) {
        const c = s.charCodeAt(i);
        if (c > 0x7f) {
          p = -1;
          break;
        }
        b[p++] = c;
      }
      if (p >= 0) {
        b[start] = n;
        this.pos = p;
        return;
      }
    }
    const len = Buffer.byteLength(s, 'utf8');
    this.varint(len);
    this.ensure(len);
    this.pos += this.buf.write(s, this.pos, len, 'utf8');
  }

  /** length-delimited bytes from a lowercase hex string (ids: 8 or 16 bytes, so one length byte) */
  hex(h: string): void {
    const len = h.length >> 1;
    this.ensure(len + 1);
    const b = this.buf;
    let p = this.pos;
    b[p++] = len;
    // a JS loop beats Buffer#write(…, 'hex') for 16–32 characters (no argument checks, no native call)
    for (let i = 0; i < h.length; i += 2) b[p++] = (HEX[h.charCodeAt(i)] << 4) | HEX[h.charCodeAt(i + 1)];
    this.pos = p;
  }

  /** starts a length-delimited sub-message: returns the mark for `end()` (one length byte reserved) */
  begin(): number {
    this.ensure(1);
    return this.pos++;
  }

  /** closes a sub-message opened by `begin()`, moving its body right if the length needs more than one byte */
  end(mark: number): void {
    const len = this.pos - mark - 1;
    if (len < 128) {
      this.buf[mark] = len;
      return;
    }
    const extra = (len < 1 << 14 ? 2 : len < 1 << 21 ? 3 : len < 1 << 28 ? 4 : 5) - 1;
    this.ensure(extra);
    this.buf.copyWithin(mark + 1 + extra, mark + 1, this.pos);
    let p = mark;
    let n = len;
    while (n > 0x7f) {
      this.buf[p++] = (n % 128) | 0x80;
      n = Math.floor(n / 128);
    }
    this.buf[p] = n;
    this.pos += extra;
  }

  /** the bytes written so far (a view, not a copy) */
  bytes(): Buffer {
    return this.buf.subarray(0, this.pos);
  }
}

/** char code → nibble for 0-9 a-f A-F */
const HEX = new Uint8Array(128);
for (let i = 0; i < 10; i++) HEX[48 + i] = i;
for (let i = 0; i < 6; i++) HEX[97 + i] = HEX[65 + i] = 10 + i;

const LEN = 2;
const VARINT = 0;
const I64 = 1;
const I32 = 5;

function protoAnyValue(w: ProtoWriter, v: AttributeValue): void {
  // AnyValue: 1 string, 2 bool, 3 int64, 4 double, 5 ArrayValue{1 repeated AnyValue}
  if (typeof v === 'string') {
    w.tag(1, LEN);
    w.string(v);
  } else if (typeof v === 'number') {
    if (Number.isSafeInteger(v)) {
      w.tag(3, VARINT);
      w.int64(v);
    } else {
      w.tag(4, I64);
      w.double(v);
    }
  } else if (typeof v === 'boolean') {
    w.tag(2, VARINT);
    w.varint(v ? 1 : 0);
  } else if (Array.isArray(v)) {
    w.tag(5, LEN);
    const m = w.begin();
    for (const x of v) {
      w.tag(1, LEN);
      const mv = w.begin();
      if (x !== null && x !== undefined) protoAnyValue(w, x);
      w.end(mv);
    }
    w.end(m);
  }
}

/**
 * Attribute keys come from the one Attr table (telemetry.ts): a few dozen strings, each encoded once
 * ([tag 1, length, bytes]) and then copied. Capped so arbitrary keys from other code cannot grow it forever.
 */
const KEY_CACHE = new Map<string, Uint8Array>();
const KEY_CACHE_MAX = 512;

/** A KeyValue's key field ([tag 1, length, UTF-8 bytes]) of `k`, encoded once per key (KEY_CACHE). */
export function keyBytes(k: string): Uint8Array {
  let kb = KEY_CACHE.get(k);
  if (!kb) {
    const t = new ProtoWriter(k.length * 3 + 8);
    t.tag(1, LEN);
    t.string(k);
    kb = Uint8Array.from(t.bytes());
    if (KEY_CACHE.size < KEY_CACHE_MAX) KEY_CACHE.set(k, kb);
  }
  return kb;
}

function protoKey(w: ProtoWriter, k: string): void {
  w.raw(keyBytes(k));
}

/** one KeyValue as field `field` (span attributes: 9), cached or not */
export function protoKeyValue(w: ProtoWriter, field: number, k: string, v: AttributeValue): void {
  // KeyValue: 1 key, 2 AnyValue
  if (typeof v === 'string' && field < 16 && v.length < 100) {
    const kb = KEY_CACHE.get(k);
    if (kb && protoShortStringKeyValue(w, field, kb, v)) return;
  }
  w.tag(field, LEN);
  const m = w.begin();
  protoKey(w, k);
  w.tag(2, LEN);
  const mv = w.begin();
  protoAnyValue(w, v);
  w.end(mv);
  w.end(m);
}

/**
 * protoKeyValue for a short ASCII string value (an invocation id: a new value on every call, so never cached)
 * under the key bytes `kb` (keyBytes): the three lengths are known up front, so one capacity check and no
 * begin/end bookkeeping. The same bytes as the general path; false (nothing written: `w.pos` stays) when the value
 * is not ASCII or the lengths do not fit one-byte varints.
 *
 * ASCII is checked while copying (the characters OR-ed together), not by a regular expression first: on a flat
 * string that is one pass instead of two. Invocation ids are made flat (scheduler/client.ts newInvocationId); a
 * ConsString here (randomUUID's result) is flattened by the first charCodeAt's runtime call, as it was by a test().
 */
export function protoShortStringKeyValue(w: ProtoWriter, field: number, kb: Uint8Array, v: string): boolean {
  const n = v.length;
  // KeyValue{key bytes (cached), 2: AnyValue{1: string}}: AnyValue is 2 + n bytes, the KeyValue kb + 2 + that
  const kvLen = kb.length + 4 + n;
  if (kvLen > 127) return false;
  w.ensure(kvLen + 2);
  const b = w.buf;
  const start = w.pos;
  let p = start + kb.length + 6;
  let all = 0;
  for (let i = 0; i < n; i++) {
    const c = v.charCodeAt(i);
    all |= c;
    b[p++] = c;
  }
  if (all > 0x7f) return false;
  b[start] = (field << 3) | LEN;
  b[start + 1] = kvLen;
  b.set(kb, start + 2);
  p = start + 2 + kb.length;
  b[p] = (2 << 3) | LEN;
  b[p + 1] = n + 2;
  b[p + 2] = (1 << 3) | LEN;
  b[p + 3] = n;
  w.pos = start + 2 + kvLen;
  return true;
}

/**
 * Whole encoded span attributes (field 9 KeyValue, tag to end) of recurring key/value pairs: tenant, function,
 * version, mode, start kind, outcome, route, status… repeat on every invocation, so each is encoded once and
 * then copied. A key whose values keep changing (invocation ids) stops being cached after
 * PAIR_VALUES_MAX distinct values.
 *
 * One slot per key, remembering the value it saw last and its bytes: consecutive spans mostly carry the same
 * values (the same function called again), and one `===` is cheaper than the second Map look-up (attributes are
 * ~3/4 of the encoder's time for a warm call's 5 spans; this took ~7 % off creating + encoding them).
 */
interface PairSlot {
  /** the value seen last (cached values only) and its pair id */
  lastValue: AttributeValue | undefined;
  lastId: number;
  /** value → pair id; null once the key had PAIR_VALUES_MAX distinct values (not cached from then on) */
  values: Map<AttributeValue, number> | null;
}
const PAIR_CACHE = new Map<string, PairSlot>();
const PAIR_VALUES_MAX = 64;
const PAIR_KEYS_MAX = 256;
/** longer string values are not cached (span-records.ts relies on this rule to tell a key no longer cached) */
export const PAIR_VALUE_MAX_CHARS = 64;
/**
 * The cached pairs' bytes by id, append-only (at most PAIR_KEYS_MAX × PAIR_VALUES_MAX): span records refer to a
 * pair by this id, and the export thread gets the table as it grows (trace-export.ts).
 */
export const PAIR_BYTES: Uint8Array[] = [];

/** The id of the cached encoding of span attribute `k` = `v` (PAIR_BYTES), or -1 when it is not cached. */
export function pairId(k: string, v: AttributeValue): number {
  const slot = PAIR_CACHE.get(k);
  if (slot !== undefined) {
    if (slot.lastValue === v) return slot.lastId;
    const m = slot.values;
    if (m === null || typeof v === 'object' || (typeof v === 'string' && v.length > PAIR_VALUE_MAX_CHARS)) return -1;
    let id = m.get(v);
    if (id === undefined) {
      if (m.size >= PAIR_VALUES_MAX) {
        slot.values = null;
        slot.lastValue = undefined;
        return -1;
      }
      id = newPair(k, v);
      m.set(v, id);
    }
    slot.lastValue = v;
    slot.lastId = id;
    return id;
  }
  if (PAIR_CACHE.size >= PAIR_KEYS_MAX || typeof v === 'object' || (typeof v === 'string' && v.length > PAIR_VALUE_MAX_CHARS)) return -1;
  const id = newPair(k, v);
  PAIR_CACHE.set(k, { lastValue: v, lastId: id, values: new Map([[v, id]]) });
  return id;
}

function protoSpanAttribute(w: ProtoWriter, k: string, v: AttributeValue): void {
  const id = pairId(k, v);
  if (id >= 0) w.raw(PAIR_BYTES[id]!);
  else protoKeyValue(w, 9, k, v);
}

/** encodes one span attribute into a right-sized copy and files it in PAIR_BYTES; returns its id */
function newPair(k: string, v: AttributeValue): number {
  const t = new ProtoWriter(128);
  protoKeyValue(t, 9, k, v);
  PAIR_BYTES.push(Uint8Array.from(t.bytes()));
  return PAIR_BYTES.length - 1;
}

function protoAttributes(w: ProtoWriter, field: number, attrs: Attributes | undefined): void {
  if (!attrs) return;
  for (const k in attrs) {
    const v = attrs[k];
    if (v === undefined || v === null) continue;
    if (field === 9) protoSpanAttribute(w, k, v);
    else protoKeyValue(w, field, k, v);
  }
}

function protoExtra(w: ProtoWriter, x: (string | AttributeValue)[] | undefined): void {
  if (!x) return;
  for (let i = 0; i < x.length; i += 2) protoSpanAttribute(w, x[i] as string, x[i + 1] as AttributeValue);
}

function protoLink(w: ProtoWriter, l: Link): void {
  // Link: 1 trace_id, 2 span_id, 3 trace_state, 4 attributes, 6 flags
  w.tag(13, LEN);
  const m = w.begin();
  w.tag(1, LEN);
  w.hex(l.context.traceId);
  w.tag(2, LEN);
  w.hex(l.context.spanId);
  protoAttributes(w, 4, l.attributes);
  w.tag(6, I32);
  w.fixed32(l.context.traceFlags & 0xff);
  w.end(m);
}

/**
 * [tag 5, length, name bytes, tag 6, kind] per span name and kind: a handful of names (SpanName), encoded once.
 * Capped so names from other code cannot grow it forever.
 */
const NAME_CACHE = new Map<string, number[]>();
const NAME_CACHE_MAX = 256;
/** name+kind bytes by id (append-only, like PAIR_BYTES; span records refer to them by id) */
export const NAME_BYTES: Uint8Array[] = [];

/** The id of the cached name+kind bytes (NAME_BYTES), or -1 past NAME_CACHE_MAX names. */
export function nameKindId(name: string, kind: number): number {
  let byKind = NAME_CACHE.get(name);
  const hit = byKind?.[kind];
  if (hit !== undefined) return hit;
  if (!byKind) {
    if (NAME_CACHE.size >= NAME_CACHE_MAX) return -1;
    NAME_CACHE.set(name, (byKind = []));
  }
  NAME_BYTES.push(encodeNameAndKind(name, kind));
  return (byKind[kind] = NAME_BYTES.length - 1);
}

function encodeNameAndKind(name: string, kind: number): Uint8Array {
  const t = new ProtoWriter(name.length * 3 + 16);
  t.tag(5, LEN);
  t.string(name);
  // OTLP SpanKind = API SpanKind + 1 (0 is UNSPECIFIED in the proto)
  t.tag(6, VARINT);
  t.varint(kind + 1);
  return Uint8Array.from(t.bytes());
}

function nameAndKind(name: string, kind: number): Uint8Array {
  const id = nameKindId(name, kind);
  return id >= 0 ? NAME_BYTES[id]! : encodeNameAndKind(name, kind);
}

/** Appends one `Span` (as field 2 of ScopeSpans) to `w`. */
export function protoSpan(w: ProtoWriter, s: FnSpan): void {
  // The fixed head in one go (one capacity check): ScopeSpans.spans tag, a length byte reserved (`end` below
  // widens it), trace id (field 1), span id (2), parent span id (4) — tags are single bytes: field < 16.
  w.ensure(2 + 18 + 10 + 10);
  w.buf[w.pos++] = (2 << 3) | LEN;
  const m = w.pos++;
  const t = s.tid;
  w.buf[w.pos++] = (1 << 3) | LEN;
  w.idWords(t.a, t.b, t.c, t.d);
  w.buf[w.pos++] = (2 << 3) | LEN;
  w.idWords(s.hi, s.lo);
  if (s.hasParent) {
    w.buf[w.pos++] = (4 << 3) | LEN;
    w.idWords(s.phi, s.plo);
  }
  w.raw(nameAndKind(s.name, s.kind));
  w.ensure(18);
  w.buf[w.pos++] = (7 << 3) | I64;
  w.fixed64Ms(s.startMs);
  w.buf[w.pos++] = (8 << 3) | I64;
  w.fixed64Ms(s.endMs);
  protoAttributes(w, 9, s.base);
  const sc = s.schema;
  if (sc !== undefined) {
    const vals = s.vals!;
    for (let i = 0; i < vals.length; i++) {
      const v = vals[i];
      if (v !== undefined && v !== null) protoSpanAttribute(w, sc.keys[i]!, v);
    }
  }
  protoExtra(w, s.extra);
  if (s.eventList) {
    for (const e of s.eventList) {
      // Event: 1 time, 2 name, 3 attributes
      w.tag(11, LEN);
      const me = w.begin();
      w.tag(1, I64);
      w.fixed64Ms(e.timeMs);
      w.tag(2, LEN);
      w.string(e.name);
      protoAttributes(w, 3, e.attributes);
      w.end(me);
    }
  }
  if (s.linkList) for (const l of s.linkList) protoLink(w, l);
  if (s.status.code !== 0) {
    // Status: 2 message, 3 code
    w.tag(15, LEN);
    const ms = w.begin();
    if (s.status.message) {
      w.tag(2, LEN);
      w.string(s.status.message);
    }
    w.tag(3, VARINT);
    w.varint(s.status.code);
    w.end(ms);
  }
  // flags: low 8 bits = W3C trace flags; bit 8/9 = "parent is remote" known / value (trace.proto SpanFlags)
  w.tag(16, I32);
  w.fixed32((s.traceFlags & 0xff) | 0x100 | (s.parentRemote ? 0x200 : 0));
  w.end(m);
}

/**
 * The bytes before a batch's spans: ExportTraceServiceRequest{1: ResourceSpans{1: Resource, 2: ScopeSpans{1:
 * scope, 2: spans…}}}. `spansBytes` = length of the encoded spans that follow.
 */
export function protoBatchHeader(resource: Attributes, scopeName: string, spansBytes: number): Buffer {
  const r = new ProtoWriter(512);
  protoAttributes(r, 1, resource);
  const resourceMsg = Buffer.from(r.bytes());
  const sc = new ProtoWriter(64);
  sc.tag(1, LEN);
  sc.string(scopeName);
  const scopeMsg = Buffer.from(sc.bytes());
  const vlen = (n: number) => (n < 1 << 7 ? 1 : n < 1 << 14 ? 2 : n < 1 << 21 ? 3 : n < 1 << 28 ? 4 : 5);
  const scopeSpansLen = 1 + vlen(scopeMsg.length) + scopeMsg.length + spansBytes;
  const resourceSpansLen = 1 + vlen(resourceMsg.length) + resourceMsg.length + 1 + vlen(scopeSpansLen) + scopeSpansLen;
  const h = new ProtoWriter(64 + resourceMsg.length + scopeMsg.length);
  /** a finished sub-message as a length-delimited field */
  const embed = (field: number, msg: Buffer) => {
    h.tag(field, LEN);
    h.varint(msg.length);
    h.ensure(msg.length);
    h.pos += msg.copy(h.buf, h.pos);
  };
  h.tag(1, LEN);
  h.varint(resourceSpansLen);
  embed(1, resourceMsg);
  h.tag(2, LEN);
  h.varint(scopeSpansLen);
  embed(1, scopeMsg);
  return Buffer.from(h.bytes());
}

/**
 * protoBatchHeader for one exporter: the resource and scope are encoded once (they never change), so sealing a
 * batch only writes the three outer lengths — straight into the room the batch writer keeps in front of its
 * spans, no buffer allocated per batch.
 */
export class ProtoBatchHeader {
  /** the encoded Resource and InstrumentationScope messages (the export thread writes headers from them too) */
  readonly resourceMsg: Buffer;
  readonly scopeMsg: Buffer;
  /** the most bytes `writeBefore` ever needs (lengths of up to 5 bytes each) */
  readonly maxLength: number;

  constructor(resource: Attributes, scopeName: string) {
    const r = new ProtoWriter(512);
    protoAttributes(r, 1, resource);
    this.resourceMsg = Buffer.from(r.bytes());
    const sc = new ProtoWriter(64);
    sc.tag(1, LEN);
    sc.string(scopeName);
    this.scopeMsg = Buffer.from(sc.bytes());
    this.maxLength = 3 + 3 * 5 + 5 + this.resourceMsg.length + 5 + this.scopeMsg.length;
  }

  /**
   * Writes the header for `spansBytes` of encoded spans so that it ends exactly at `end` in `buf`; returns where
   * it starts. Byte for byte what protoBatchHeader returns.
   */
  writeBefore(buf: Buffer, end: number, spansBytes: number): number {
    return writeHeaderBefore(buf, end, spansBytes, this.resourceMsg, this.scopeMsg);
  }
}

// ---- JSON (OTLP/JSON: https://opentelemetry.io/docs/specs/otlp/#json-protobuf-encoding) ----

/** epoch ms (float) → decimal nanoseconds string, exact */
function nsString(ms: number): string {
  const msInt = Math.floor(ms);
  let frac = Math.round((ms - msInt) * 1e6);
  if (frac > 999_999) frac = 999_999;
  return `${msInt}${String(frac).padStart(6, '0')}`;
}

function jsonAnyValue(v: AttributeValue): string {
  if (typeof v === 'string') return `{"stringValue":${JSON.stringify(v)}}`;
  if (typeof v === 'number') return Number.isSafeInteger(v) ? `{"intValue":"${v}"}` : `{"doubleValue":${Number.isFinite(v) ? v : JSON.stringify(String(v))}}`;
  if (typeof v === 'boolean') return `{"boolValue":${v}}`;
  if (Array.isArray(v)) return `{"arrayValue":{"values":[${v.map((x) => (x === null || x === undefined ? '{}' : jsonAnyValue(x))).join(',')}]}}`;
  return '{}';
}

function jsonAttributes(attrs: Attributes | undefined): string {
  let out = '';
  if (attrs) {
    for (const k in attrs) {
      const v = attrs[k];
      if (v === undefined || v === null) continue;
      out += `${out ? ',' : ''}{"key":${JSON.stringify(k)},"value":${jsonAnyValue(v)}}`;
    }
  }
  return `[${out}]`;
}

/** One span as an OTLP/JSON object. */
export function jsonSpan(s: FnSpan): string {
  let out = `{"traceId":"${s.traceId}","spanId":"${s.spanId}"`;
  if (s.parentId) out += `,"parentSpanId":"${s.parentId}"`;
  out += `,"name":${JSON.stringify(s.name)},"kind":${s.kind + 1},"startTimeUnixNano":"${nsString(s.startMs)}","endTimeUnixNano":"${nsString(s.endMs)}"`;
  out += `,"attributes":${jsonAttributes(s.attributes)}`; // JSON is the slow path anyway: the merged view
  if (s.eventList) {
    out += `,"events":[${s.eventList.map((e) => `{"timeUnixNano":"${nsString(e.timeMs)}","name":${JSON.stringify(e.name)},"attributes":${jsonAttributes(e.attributes)}}`).join(',')}]`;
  }
  if (s.linkList) {
    out += `,"links":[${s.linkList.map((l) => `{"traceId":"${l.context.traceId}","spanId":"${l.context.spanId}","attributes":${jsonAttributes(l.attributes)},"flags":${l.context.traceFlags & 0xff}}`).join(',')}]`;
  }
  if (s.status.code !== 0) out += `,"status":{"code":${s.status.code}${s.status.message ? `,"message":${JSON.stringify(s.status.message)}` : ''}}`;
  out += `,"flags":${(s.traceFlags & 0xff) | 0x100 | (s.parentRemote ? 0x200 : 0)}}`;
  return out;
}

/** A whole OTLP/JSON ExportTraceServiceRequest around already-encoded spans. */
export function jsonBatch(resource: Attributes, scopeName: string, spans: string[]): string {
  return `{"resourceSpans":[{"resource":{"attributes":${jsonAttributes(resource)}},"scopeSpans":[{"scope":{"name":${JSON.stringify(scopeName)}},"spans":[${spans.join(',')}]}]}]}`;
}
