// Span records → OTLP protobuf, for the export thread (services/common/trace-export.ts, otlp-export-thread.mjs).
// Plain JS with no dependencies: see otlp-post.mjs. Types: otlp-records.d.mts.
//
// Why: encoding a warm call's 5 spans on the event loop cost ~5 µs per call in the host (perf, inclusive; ~2.5× its
// tight-loop cost: cold caches), the biggest part of the span pipeline's loop time. On end() a span now leaves a
// fixed-layout record (span-records.ts): its ids and times as numbers in typed arrays, and per attribute the id of
// its cached encoded bytes (otlp-encode.ts's pair cache) or, for a value that does not repeat (an invocation id),
// its KeyValue bytes. The export thread turns a sealed batch of records into exactly the bytes protoSpan() would
// have written (test/unit/telemetry-export.test.ts compares them byte for byte).

/** int32 words per span record: trace id (4), span id (2), parent span id (2), meta, end of its bytes */
export const REC_INTS = 10;
/** meta: the low 24 bits are the name+kind id (otlp-encode.ts nameKindId) */
export const META_NAME_MASK = 0xffffff;
/** meta bit: the parent came from another process (SpanFlags bit 9) */
export const META_REMOTE = 1 << 24;
/** meta bit: the record's bytes are the whole span, already encoded (events, links, a status, an uncached name) */
export const META_RAW = 1 << 25;

/** A growable output buffer (the subset of otlp-encode.ts's ProtoWriter the encoder needs). */
export class OutBuffer {
  constructor(initial) {
    this.buf = Buffer.allocUnsafe(initial);
    this.pos = 0;
  }
  ensure(n) {
    if (this.pos + n <= this.buf.length) return;
    const next = Buffer.allocUnsafe(Math.max(this.buf.length * 2, this.pos + n));
    this.buf.copy(next, 0, 0, this.pos);
    this.buf = next;
  }
}

function varintLen(n) {
  return n < 1 << 7 ? 1 : n < 1 << 14 ? 2 : n < 1 << 21 ? 3 : n < 1 << 28 ? 4 : 5;
}

function putVarint(b, p, n) {
  while (n > 0x7f) {
    b[p++] = (n % 128) | 0x80;
    n = Math.floor(n / 128);
  }
  b[p++] = n;
  return p;
}

function putWord(b, p, v) {
  b[p] = v >>> 24;
  b[p + 1] = v >>> 16;
  b[p + 2] = v >>> 8;
  b[p + 3] = v;
}

/**
 * epoch milliseconds (float) → fixed64 nanoseconds at `p`, exact to the nanosecond without BigInt (also
 * ProtoWriter.fixed64Ms's, in otlp-encode.ts)
 */
export function putFixed64Ms(b, p, ms) {
  const msInt = Math.floor(ms);
  let frac = Math.round((ms - msInt) * 1e6);
  if (frac > 999_999) frac = 999_999;
  // ns = msInt·10⁶ + frac, split so every intermediate stays below 2⁵³
  const mh = Math.floor(msInt / 65536);
  const ml = msInt - mh * 65536;
  const a = mh * 1e6;
  const ah = Math.floor(a / 65536);
  const al = a - ah * 65536;
  const c = al * 65536 + ml * 1e6 + frac;
  const carry = Math.floor(c / 4294967296);
  const lo = c - carry * 4294967296;
  const hi = ah + carry;
  b[p] = lo;
  b[p + 1] = lo >>> 8;
  b[p + 2] = lo >>> 16;
  b[p + 3] = lo >>> 24;
  b[p + 4] = hi;
  b[p + 5] = hi >>> 8;
  b[p + 6] = hi >>> 16;
  b[p + 7] = hi >>> 24;
}

/** where the last readVarint stopped (a module variable, not an array per call: nothing allocated per attribute) */
let next = 0;

/** the varint at `p` of `b` (values below 2^28: ids and lengths); sets `next` */
function readVarint(b, p) {
  let r = 0;
  let shift = 0;
  for (;;) {
    const x = b[p++];
    r |= (x & 0x7f) << shift;
    if (x < 0x80) {
      next = p;
      return r;
    }
    shift += 7;
  }
}

/**
 * Appends the `n` spans of a record batch to `out` as ScopeSpans.spans (field 2) entries, byte for byte what
 * protoSpan() writes for the same spans. `pairs[id]` / `names[id]` are the encoded attribute pairs and name+kind
 * bytes by id (the loop's tables, sent along as they grow).
 */
export function encodeRecords(ints, times, bytes, n, pairs, names, out) {
  let start = 0;
  for (let i = 0; i < n; i++) {
    const o = i * REC_INTS;
    const meta = ints[o + 8];
    const end = ints[o + 9];
    if (meta & META_RAW) {
      out.ensure(end - start);
      out.buf.set(bytes.subarray(start, end), out.pos);
      out.pos += end - start;
      start = end;
      continue;
    }
    // attribute bytes first, so the span's length is known and written once (no move afterwards)
    let attrLen = 0;
    for (let q = start; q < end; ) {
      const x = readVarint(bytes, q);
      if (x === 0) {
        const len = readVarint(bytes, next);
        attrLen += len;
        q = next + len;
      } else {
        attrLen += pairs[x - 1].length;
        q = next;
      }
    }
    const name = names[meta & META_NAME_MASK];
    const phi = ints[o + 6];
    const plo = ints[o + 7];
    const hasParent = (phi | plo) !== 0;
    // trace id 18, span id 10, parent 10, name+kind, start and end 9 each, attributes, flags 2 + 4
    const spanLen = 28 + (hasParent ? 10 : 0) + name.length + 18 + attrLen + 6;
    out.ensure(1 + varintLen(spanLen) + spanLen);
    const b = out.buf;
    let p = out.pos;
    b[p++] = (2 << 3) | 2;
    p = putVarint(b, p, spanLen);
    b[p] = (1 << 3) | 2;
    b[p + 1] = 16;
    putWord(b, p + 2, ints[o]);
    putWord(b, p + 6, ints[o + 1]);
    putWord(b, p + 10, ints[o + 2]);
    putWord(b, p + 14, ints[o + 3]);
    b[p + 18] = (2 << 3) | 2;
    b[p + 19] = 8;
    putWord(b, p + 20, ints[o + 4]);
    putWord(b, p + 24, ints[o + 5]);
    p += 28;
    if (hasParent) {
      b[p] = (4 << 3) | 2;
      b[p + 1] = 8;
      putWord(b, p + 2, phi);
      putWord(b, p + 6, plo);
      p += 10;
    }
    b.set(name, p);
    p += name.length;
    b[p] = (7 << 3) | 1;
    putFixed64Ms(b, p + 1, times[2 * i]);
    b[p + 9] = (8 << 3) | 1;
    putFixed64Ms(b, p + 10, times[2 * i + 1]);
    p += 18;
    for (let q = start; q < end; ) {
      const x = readVarint(bytes, q);
      if (x === 0) {
        const len = readVarint(bytes, next);
        b.set(bytes.subarray(next, next + len), p);
        p += len;
        q = next + len;
      } else {
        const pair = pairs[x - 1];
        b.set(pair, p);
        p += pair.length;
        q = next;
      }
    }
    // flags (field 16, fixed32): sampled, plus "parent is remote" known (bit 8) and its value (bit 9)
    b[p] = 0x85;
    b[p + 1] = 0x01;
    b[p + 2] = 1;
    b[p + 3] = meta & META_REMOTE ? 3 : 1;
    b[p + 4] = 0;
    b[p + 5] = 0;
    out.pos = p + 6;
    start = end;
  }
}

/**
 * Writes an ExportTraceServiceRequest's head — ResourceSpans{1: Resource, 2: ScopeSpans{1: scope, 2: spans…}} —
 * for `spansBytes` of encoded spans so that it ends exactly at `end` in `buf`; returns where it starts.
 * `resource` and `scope` are the encoded Resource and InstrumentationScope messages.
 */
export function writeHeaderBefore(buf, end, spansBytes, resource, scope) {
  const scopeSpansLen = 1 + varintLen(scope.length) + scope.length + spansBytes;
  const resourceSpansLen = 1 + varintLen(resource.length) + resource.length + 1 + varintLen(scopeSpansLen) + scopeSpansLen;
  const len = 1 + varintLen(resourceSpansLen) + 1 + varintLen(resource.length) + resource.length + 1 + varintLen(scopeSpansLen) + 1 + varintLen(scope.length) + scope.length;
  const start = end - len;
  let p = start;
  buf[p++] = (1 << 3) | 2;
  p = putVarint(buf, p, resourceSpansLen);
  buf[p++] = (1 << 3) | 2;
  p = putVarint(buf, p, resource.length);
  buf.set(resource, p);
  p += resource.length;
  buf[p++] = (2 << 3) | 2;
  p = putVarint(buf, p, scopeSpansLen);
  buf[p++] = (1 << 3) | 2;
  p = putVarint(buf, p, scope.length);
  buf.set(scope, p);
  return start;
}
