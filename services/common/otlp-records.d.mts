/** Span records → OTLP protobuf (otlp-records.mjs; the loop side is span-records.ts). */
export const REC_INTS: number;
export const META_NAME_MASK: number;
export const META_REMOTE: number;
export const META_RAW: number;

/** what encodeRecords writes into (ProtoWriter satisfies it) */
export interface RecordsOut {
  buf: Buffer;
  pos: number;
  ensure(n: number): void;
}

export class OutBuffer implements RecordsOut {
  constructor(initial: number);
  buf: Buffer;
  pos: number;
  ensure(n: number): void;
}

export function encodeRecords(
  ints: Int32Array,
  times: Float64Array,
  bytes: Uint8Array,
  n: number,
  pairs: readonly Uint8Array[],
  names: readonly Uint8Array[],
  out: RecordsOut,
): void;

/** epoch milliseconds → fixed64 nanoseconds at `p` (8 bytes; the caller ensured room). */
export function putFixed64Ms(b: Uint8Array, p: number, ms: number): void;

export function writeHeaderBefore(buf: Uint8Array, end: number, spansBytes: number, resource: Uint8Array, scope: Uint8Array): number;
