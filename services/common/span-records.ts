/**
 * @module span-records
 * The event loop's side of encoding off the loop: a batch of ended spans as fixed-layout records (ids, times and
 * flags in typed arrays; attributes as ids of their cached bytes or, for a value that does not repeat, the KeyValue
 * bytes), sealed and moved to the export thread, which writes the OTLP protobuf (otlp-records.mjs `encodeRecords`:
 * the same bytes as protoSpan). Why: see otlp-records.mjs.
 *
 * Layout per span i: `ints[i*REC_INTS …]` = trace id words a–d, span id hi/lo, parent hi/lo, meta (name+kind id |
 * META_REMOTE | META_RAW), end offset of its entries in `bytes`; `times[2i]`, `times[2i+1]` = start/end epoch ms.
 * Entries in `bytes`: varint(pair id + 1), or 0 + varint(length) + a KeyValue's bytes. A span with events, links
 * or a status (rare: failures), or a name past the name cache, is written whole by protoSpan (META_RAW).
 *
 * @example
 * const rec = new SpanRecords(4096);
 * writeSpanRecord(rec, span);          // in SpanSink.onEnd
 * encodeRecords(rec.ints, rec.times, rec.w.buf, rec.n, PAIR_BYTES, NAME_BYTES, out);   // anywhere
 */
import type { AttributeValue } from '@opentelemetry/api';
import { NAME_BYTES, PAIR_BYTES, PAIR_VALUE_MAX_CHARS, ProtoWriter, keyBytes, nameKindId, pairId, protoKeyValue, protoShortStringKeyValue, protoSpan } from './otlp-encode.ts';
import { META_RAW, META_REMOTE, REC_INTS, encodeRecords, type RecordsOut } from './otlp-records.mjs';
import { drawSpanIdWords, drawnHi, drawnLo, type FnSpan, type SpanSchema, type SpanValues } from './trace-span.ts';

/** One batch of span records (its three buffers move to the export thread and back). */
export class SpanRecords {
  ints: Int32Array;
  times: Float64Array;
  /** attribute entries and whole encoded spans */
  w: ProtoWriter;
  /** spans recorded */
  n = 0;

  constructor(
    readonly capacity: number,
    buffers?: { ints: ArrayBuffer; times: ArrayBuffer; bytes: ArrayBuffer },
  ) {
    this.ints = buffers ? new Int32Array(buffers.ints) : new Int32Array(capacity * REC_INTS);
    this.times = buffers ? new Float64Array(buffers.times) : new Float64Array(capacity * 2);
    // entries: ~30 bytes per span on average for a warm call's five (pair ids, one ~40-byte invocation id twice),
    // room for 128; the writer grows if a batch needs more
    this.w = new ProtoWriter(buffers ? 0 : Math.min(4 << 20, Math.max(64 << 10, capacity * 128)));
    if (buffers) this.w.buf = Buffer.from(buffers.bytes);
  }

  /** the three buffers, for a transfer (`w.buf` is its own ArrayBuffer: allocUnsafe above the pool size) */
  buffers(): { ints: ArrayBuffer; times: ArrayBuffer; bytes: ArrayBuffer } {
    return { ints: this.ints.buffer as ArrayBuffer, times: this.times.buffer as ArrayBuffer, bytes: this.w.buf.buffer as ArrayBuffer };
  }

  /** empties the batch for reuse */
  reset(): void {
    this.n = 0;
    this.w.pos = 0;
  }
}

/** Appends `s` (ended) to `rec`; the caller seals before `rec.capacity` is exceeded. */
export function writeSpanRecord(rec: SpanRecords, s: FnSpan): void {
  const o = rec.n * REC_INTS;
  const ints = rec.ints;
  const w = rec.w;
  const sc = s.schema;
  // a schema span's name+kind id is kept on its schema (no look-up by name); updateName makes it an ordinary one
  const nk =
    s.eventList !== undefined || s.linkList !== undefined || s.status.code !== 0
      ? -1
      : sc !== undefined && s.name === sc.name
        ? sc.nk >= 0
          ? sc.nk
          : (sc.nk = nameKindId(sc.name, sc.kind))
        : nameKindId(s.name, s.kind);
  if (nk < 0) {
    protoSpan(w, s);
    ints[o + 8] = META_RAW;
    ints[o + 9] = w.pos;
    rec.n++;
    return;
  }
  ints[o] = s.ta;
  ints[o + 1] = s.tb;
  ints[o + 2] = s.tc;
  ints[o + 3] = s.td;
  ints[o + 4] = s.hi;
  ints[o + 5] = s.lo;
  ints[o + 6] = s.phi;
  ints[o + 7] = s.plo;
  ints[o + 8] = s.parentRemote ? nk | META_REMOTE : nk;
  const i2 = rec.n * 2;
  rec.times[i2] = s.startMs;
  rec.times[i2 + 1] = s.endMs;
  if (sc === undefined) {
    const base = s.base;
    for (const k in base) {
      const v = base[k];
      if (v !== undefined && v !== null) recordAttribute(w, k, v);
    }
  } else {
    // a schema span has no creation attributes object (its `base` is the shared empty one)
    recordSchemaAttributes(w, sc, s.vals!);
  }
  const x = s.extra;
  if (x) for (let i = 0; i < x.length; i += 2) recordAttribute(w, x[i] as string, x[i + 1] as AttributeValue);
  ints[o + 9] = w.pos;
  rec.n++;
}

/**
 * Appends an ended child span of `parent` over [startMs, endMs] (end clamped to start) with the attributes `vals` of
 * `sc` and a freshly drawn span id: what writeSpanRecord writes for such a span, with no span object in between (a
 * warm call's 'warm pick' and 'result delivery': its ids come straight from the parent, which the caller just used).
 * False (nothing written) when the span's name is past the name cache. The caller seals before `rec.capacity` is
 * exceeded.
 */
export function writeChildRecord(rec: SpanRecords, parent: FnSpan, sc: SpanSchema, vals: SpanValues | undefined, startMs: number, endMs: number): boolean {
  const nk = sc.nk >= 0 ? sc.nk : (sc.nk = nameKindId(sc.name, sc.kind));
  // past the name cache: only a span object can be written (whole, by protoSpan)
  if (nk < 0) return false;
  const o = rec.n * REC_INTS;
  const ints = rec.ints;
  drawSpanIdWords();
  ints[o] = parent.ta;
  ints[o + 1] = parent.tb;
  ints[o + 2] = parent.tc;
  ints[o + 3] = parent.td;
  ints[o + 4] = drawnHi();
  ints[o + 5] = drawnLo();
  ints[o + 6] = parent.hi;
  ints[o + 7] = parent.lo;
  ints[o + 8] = nk;
  const i2 = rec.n * 2;
  rec.times[i2] = startMs;
  rec.times[i2 + 1] = endMs < startMs ? startMs : endMs;
  const w = rec.w;
  if (vals !== undefined && vals.length !== 0) recordSchemaAttributes(w, sc, vals);
  ints[o + 9] = w.pos;
  rec.n++;
  return true;
}

function recordAttribute(w: ProtoWriter, k: string, v: AttributeValue): void {
  const id = pairId(k, v);
  if (id >= 0) {
    // ids stay below PAIR_KEYS_MAX × PAIR_VALUES_MAX (16,384): one or two varint bytes
    w.varint(id + 1);
    return;
  }
  const m = beginInline(w);
  protoKeyValue(w, 9, k, v);
  w.end(m);
}

/** Starts an inline entry: 0, then the KeyValue's bytes behind a length prefix (close with `w.end(mark)`). */
function beginInline(w: ProtoWriter): number {
  w.ensure(1);
  w.buf[w.pos++] = 0;
  return w.begin();
}

/** SpanSchema.lastId of a key whose values are never cached (the pair cache gave up on it) */
const UNCACHED = -2;

/**
 * A schema span's attributes in key order (what protoSpan writes for them): by index, each value checked against
 * the one its key had last (same id, no look-up); a new value is looked up once (pairId) and remembered.
 */
function recordSchemaAttributes(w: ProtoWriter, sc: SpanSchema, vals: SpanValues): void {
  const last = sc.lastValue;
  const ids = sc.lastId;
  const n = vals.length;
  // Cached values are one or two varint bytes each (pair ids + 1 below 2^14, see recordAttribute): room for all of
  // them up front, then plain byte stores — not a ProtoWriter call with its own capacity check per attribute.
  w.ensure(2 * n);
  let b = w.buf;
  let p = w.pos;
  for (let i = 0; i < n; i++) {
    const v = vals[i];
    if (v === undefined || v === null) continue;
    let id = ids[i]!;
    // UNCACHED: the key's values are written inline for good (an invocation id): no comparison with the last one
    // (two different strings of the same length are compared character by character)
    if (id !== UNCACHED && last[i] !== v) {
      id = pairId(sc.keys[i]!, v);
      // -1 for a value that is neither an array nor a long string means the key is no longer cached (otlp-encode.ts)
      if (id < 0 && typeof v !== 'object' && !(typeof v === 'string' && v.length > PAIR_VALUE_MAX_CHARS)) id = UNCACHED;
      last[i] = v;
      ids[i] = id;
    }
    if (id >= 0) {
      const x = id + 1;
      if (x < 0x80) b[p++] = x;
      else if (x < 0x4000) {
        b[p++] = (x & 0x7f) | 0x80;
        b[p++] = x >>> 7;
      } else {
        w.pos = p;
        w.varint(x);
        w.ensure(2 * (n - i));
        b = w.buf;
        p = w.pos;
      }
      continue;
    }
    w.pos = p;
    const m = beginInline(w);
    if (typeof v !== 'string' || v.length >= 100 || !protoShortStringKeyValue(w, 9, (sc.keyBytes[i] ??= keyBytes(sc.keys[i]!)), v)) protoKeyValue(w, 9, sc.keys[i]!, v);
    w.end(m);
    // the writer may have grown (a new buffer): room for the rest again
    w.ensure(2 * (n - i));
    b = w.buf;
    p = w.pos;
  }
  w.pos = p;
}

/** Encodes a batch of records on this thread (the export thread is gone): the bytes protoSpan would have written. */
export function encodeRecordsHere(rec: SpanRecords, out: RecordsOut): void {
  encodeRecords(rec.ints, rec.times, rec.w.buf, rec.n, PAIR_BYTES, NAME_BYTES, out);
}
