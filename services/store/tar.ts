/**
 * @module store/tar
 * A small tar reader (ustar, pax extended headers, GNU long names) and a deterministic tar writer.
 *
 * We read tars ourselves instead of shelling out to tar(1) so that every entry passes through one place
 * where the hostile-archive rules are enforced (see layer-unpack.ts) before anything touches the disk.
 * The reader is strict: bad header checksums, unknown entry types and a stream that ends before the
 * end-of-archive block are errors, because each of them means "this is not the archive its author made".
 *
 * The writer produces the byte stream whose sha256 names a layer built from a directory (base images):
 * entries sorted by path, owner/mode from lstat, mtime 0, so the same tree always gives the same digest.
 */
import { InvalidRequest } from '../common/errors.ts';

/** tar's unit of everything: headers and data are padded to 512-byte blocks (POSIX.1-2001 ustar). */
export const BLOCK = 512;

export type TarEntryType = 'file' | 'dir' | 'symlink' | 'hardlink' | 'char' | 'block' | 'fifo';

export interface TarEntry {
  /** the raw path as written in the archive (pax `path` > GNU `L` > ustar prefix/name). */
  path: string;
  type: TarEntryType;
  /** permission and special bits (0o7777). */
  mode: number;
  uid: number;
  gid: number;
  size: number;
  /** symlink target or hardlink target path (raw). */
  linkname: string;
  mtime: number;
  devmajor: number;
  devminor: number;
}

/** Pulls exact byte counts out of an async stream of chunks. */
class ByteReader {
  private buf: Buffer = Buffer.alloc(0);
  private done = false;
  constructor(private readonly it: AsyncIterator<Buffer>) {}

  private async fill(n: number): Promise<void> {
    const parts: Buffer[] = [this.buf];
    let have = this.buf.length;
    while (have < n && !this.done) {
      const r = await this.it.next();
      if (r.done) { this.done = true; break; }
      parts.push(r.value);
      have += r.value.length;
    }
    this.buf = parts.length === 1 ? parts[0]! : Buffer.concat(parts, have);
  }

  /** exactly n bytes, or fewer at the end of the stream. */
  async read(n: number): Promise<Buffer> {
    if (this.buf.length < n) await this.fill(n);
    const out = this.buf.subarray(0, n);
    this.buf = this.buf.subarray(out.length);
    return out;
  }

  /** up to n bytes as they arrive (for file bodies); throws on a short stream. */
  async *chunks(n: number): AsyncGenerator<Buffer> {
    let left = n;
    while (left > 0) {
      if (this.buf.length === 0) {
        if (this.done) throw truncated();
        const r = await this.it.next();
        if (r.done) { this.done = true; throw truncated(); }
        this.buf = r.value;
      }
      const take = Math.min(left, this.buf.length);
      const out = this.buf.subarray(0, take);
      this.buf = this.buf.subarray(take);
      left -= take;
      yield out;
    }
  }

  /** reads and discards the rest of the stream (trailing padding after the end-of-archive blocks). */
  async drain(): Promise<void> {
    this.buf = Buffer.alloc(0);
    while (!this.done) {
      const r = await this.it.next();
      if (r.done) this.done = true;
    }
  }
}

function truncated(): InvalidRequest {
  return new InvalidRequest('archive is truncated: the stream ended inside an entry', { reason: 'truncated' });
}

function cstr(b: Buffer, off: number, len: number): string {
  const s = b.subarray(off, off + len);
  const nul = s.indexOf(0);
  return s.subarray(0, nul < 0 ? s.length : nul).toString('utf8');
}

/** numeric header field: octal text, or GNU base-256 when the top bit of the first byte is set. */
function num(b: Buffer, off: number, len: number, field: string): number {
  const s = b.subarray(off, off + len);
  if (s[0]! & 0x80) {
    if (s[0]! & 0x40) throw new InvalidRequest(`tar header field ${field} is negative`, { reason: 'bad-header', field });
    let v = s[0]! & 0x3f;
    for (let i = 1; i < s.length; i++) v = v * 256 + s[i]!;
    if (!Number.isSafeInteger(v)) throw new InvalidRequest(`tar header field ${field} is too large`, { reason: 'bad-header', field });
    return v;
  }
  const t = cstr(b, off, len).trim();
  if (t === '') return 0;
  if (!/^[0-7]+$/.test(t)) throw new InvalidRequest(`tar header field ${field} is not octal`, { reason: 'bad-header', field });
  return parseInt(t, 8);
}

function checksumOk(h: Buffer): boolean {
  let sum = 0;
  for (let i = 0; i < BLOCK; i++) sum += i >= 148 && i < 156 ? 0x20 : h[i]!;
  const want = cstr(h, 148, 8).trim();
  return want !== '' && /^[0-7]+$/.test(want) && parseInt(want, 8) === sum;
}

function parsePax(data: Buffer): Record<string, string> {
  const out: Record<string, string> = {};
  let i = 0;
  while (i < data.length) {
    const sp = data.indexOf(0x20, i);
    if (sp < 0) break;
    const len = parseInt(data.subarray(i, sp).toString('ascii'), 10);
    if (!Number.isSafeInteger(len) || len <= 0 || i + len > data.length) {
      throw new InvalidRequest('malformed pax extended header', { reason: 'bad-header' });
    }
    const rec = data.subarray(sp + 1, i + len - 1).toString('utf8');
    const eq = rec.indexOf('=');
    if (eq > 0) out[rec.slice(0, eq)] = rec.slice(eq + 1);
    i += len;
  }
  return out;
}

const TYPES: Record<string, TarEntryType> = {
  '0': 'file', '\0': 'file', '7': 'file', '1': 'hardlink', '2': 'symlink', '3': 'char', '4': 'block', '5': 'dir', '6': 'fifo',
};

/** size of a meta entry's body (pax, GNU long name) we are willing to hold in memory: 1 MiB is far above any real path. */
const MAX_META_BYTES = 1 << 20;

/**
 * Reads a tar stream entry by entry. For each entry `onEntry` is awaited with the entry and an async
 * iterable of its body (which must be fully consumed or is skipped). Throws InvalidRequest on a
 * malformed or truncated archive.
 *
 * @example
 * await readTar(stream, async (e, body) => { if (e.type === 'file') for await (const c of body) write(c); });
 */
export async function readTar(
  source: AsyncIterable<Buffer>,
  onEntry: (entry: TarEntry, body: AsyncIterable<Buffer>) => Promise<void>,
): Promise<void> {
  const r = new ByteReader(source[Symbol.asyncIterator]());
  let pax: Record<string, string> = {};
  let globalPax: Record<string, string> = {};
  let longName: string | undefined;
  let longLink: string | undefined;
  let sawAny = false;
  for (;;) {
    const h = await r.read(BLOCK);
    if (h.length === 0) {
      throw new InvalidRequest(sawAny ? 'archive is truncated: no end-of-archive block' : 'archive is empty',
        { reason: sawAny ? 'truncated' : 'empty' });
    }
    if (h.length < BLOCK) throw truncated();
    if (h.every((x) => x === 0)) break; // end of archive (the second zero block and padding are drained below)
    sawAny = true;
    if (!checksumOk(h)) throw new InvalidRequest('tar header checksum mismatch (not a tar, or corrupt)', { reason: 'bad-header' });
    const flag = String.fromCharCode(h[156]!);
    const size = num(h, 124, 12, 'size');

    if (flag === 'x' || flag === 'g' || flag === 'L' || flag === 'K') {
      if (size > MAX_META_BYTES) throw new InvalidRequest('tar meta entry too large', { reason: 'bad-header', size });
      const padded = Math.ceil(size / BLOCK) * BLOCK;
      const body = await r.read(padded);
      if (body.length < padded) throw truncated();
      const data = body.subarray(0, size);
      if (flag === 'x') pax = { ...pax, ...parsePax(data) };
      else if (flag === 'g') globalPax = { ...globalPax, ...parsePax(data) };
      else if (flag === 'L') longName = cstr(data, 0, data.length);
      else longLink = cstr(data, 0, data.length);
      continue;
    }
    const type = TYPES[flag];
    if (!type) throw new InvalidRequest(`unsupported tar entry type ${JSON.stringify(flag)}`, { reason: 'unsupported-type', typeflag: flag });

    const magic = h.subarray(257, 263).toString('latin1');
    const isUstar = magic === 'ustar\0';
    const prefix = isUstar ? cstr(h, 345, 155) : '';
    const rawName = cstr(h, 0, 100);
    const meta = { ...globalPax, ...pax };
    const path = meta.path ?? longName ?? (prefix ? `${prefix}/${rawName}` : rawName);
    const entry: TarEntry = {
      path,
      type,
      mode: num(h, 100, 8, 'mode') & 0o7777,
      uid: meta.uid !== undefined ? Number(meta.uid) : num(h, 108, 8, 'uid'),
      gid: meta.gid !== undefined ? Number(meta.gid) : num(h, 116, 8, 'gid'),
      size: meta.size !== undefined ? Number(meta.size) : size,
      linkname: meta.linkpath ?? longLink ?? cstr(h, 157, 100),
      mtime: meta.mtime !== undefined ? Math.floor(Number(meta.mtime)) : num(h, 136, 12, 'mtime'),
      devmajor: isUstar || magic === 'ustar ' ? num(h, 329, 8, 'devmajor') : 0,
      devminor: isUstar || magic === 'ustar ' ? num(h, 337, 8, 'devminor') : 0,
    };
    pax = {};
    longName = undefined;
    longLink = undefined;
    if (!Number.isSafeInteger(entry.size) || entry.size < 0 || !Number.isSafeInteger(entry.uid) || !Number.isSafeInteger(entry.gid)) {
      throw new InvalidRequest('tar header has an invalid size/uid/gid', { reason: 'bad-header', path });
    }
    // links, dirs, devices and fifos are header-only whatever their size field says (as Go's archive/tar
    // reads them, which is what wrote most image layers).
    const dataSize = type === 'file' ? entry.size : 0;
    const dataPadded = Math.ceil(dataSize / BLOCK) * BLOCK;
    let consumed = 0;
    const body: AsyncIterable<Buffer> = {
      [Symbol.asyncIterator]: async function* () {
        for await (const c of r.chunks(dataSize - consumed)) {
          consumed += c.length;
          yield c;
        }
      },
    };
    await onEntry(entry, body);
    // skip whatever the consumer left unread, then the padding
    for await (const c of r.chunks(dataSize - consumed)) consumed += c.length;
    for await (const _ of r.chunks(dataPadded - dataSize)) { /* padding */ }
  }
  await r.drain();
}

// ---------------------------------------------------------------------------------------------------
// writer

function octal(value: number, width: number): string {
  return value.toString(8).padStart(width - 1, '0') + '\0';
}

export interface HeaderFields {
  path: string;
  type: TarEntryType;
  mode?: number;
  uid?: number;
  gid?: number;
  size?: number;
  linkname?: string;
  mtime?: number;
  devmajor?: number;
  devminor?: number;
}

const FLAG: Record<TarEntryType, string> = {
  file: '0', hardlink: '1', symlink: '2', char: '3', block: '4', dir: '5', fifo: '6',
};

function rawHeader(name: string, flag: string, f: Omit<HeaderFields, 'path' | 'type'>, linkname: string): Buffer {
  const h = Buffer.alloc(BLOCK);
  h.write(name, 0, 100, 'utf8');
  h.write(octal(f.mode ?? 0o644, 8), 100, 'ascii');
  h.write(octal(f.uid ?? 0, 8), 108, 'ascii');
  h.write(octal(f.gid ?? 0, 8), 116, 'ascii');
  h.write(octal(f.size ?? 0, 12), 124, 'ascii');
  h.write(octal(f.mtime ?? 0, 12), 136, 'ascii');
  h.write(flag, 156, 'latin1');
  h.write(linkname, 157, 100, 'utf8');
  h.write('ustar\0', 257, 'latin1');
  h.write('00', 263, 'latin1');
  h.write(octal(f.devmajor ?? 0, 8), 329, 'ascii');
  h.write(octal(f.devminor ?? 0, 8), 337, 'ascii');
  h.fill(0x20, 148, 156);
  let sum = 0;
  for (let i = 0; i < BLOCK; i++) sum += h[i]!;
  h.write(octal(sum, 7) + ' ', 148, 'ascii');
  return h;
}

function paxRecord(key: string, value: string): string {
  // "<len> key=value\n" where <len> counts the whole record, its own digits included
  const body = ` ${key}=${value}\n`;
  const n = Buffer.byteLength(body);
  let d = String(n).length;
  while (String(n + d).length !== d) d++;
  return `${n + d}${body}`;
}

/**
 * The header block(s) of one entry: a pax header first when the path or link target does not fit
 * ustar's 100 bytes. Exported for fixture generators (hostile archives are written with it).
 */
export function tarHeader(f: HeaderFields): Buffer {
  const name = f.type === 'dir' && !f.path.endsWith('/') ? `${f.path}/` : f.path;
  const link = f.linkname ?? '';
  const records: string[] = [];
  if (Buffer.byteLength(name) > 100) records.push(paxRecord('path', name));
  if (Buffer.byteLength(link) > 100) records.push(paxRecord('linkpath', link));
  const main = rawHeader(Buffer.byteLength(name) > 100 ? name.slice(0, 99) : name, FLAG[f.type], f,
    Buffer.byteLength(link) > 100 ? link.slice(0, 99) : link);
  if (records.length === 0) return main;
  const data = Buffer.from(records.join(''), 'utf8');
  const paxH = rawHeader('PaxHeader', 'x', { size: data.length, mode: 0o644 }, '');
  return Buffer.concat([paxH, data, padding(data.length), main]);
}

/** zero bytes up to the next block boundary after `size` bytes. */
export function padding(size: number): Buffer {
  return Buffer.alloc((BLOCK - (size % BLOCK)) % BLOCK);
}

/** the end-of-archive marker: two zero blocks. */
export const END_OF_ARCHIVE = Buffer.alloc(BLOCK * 2);
