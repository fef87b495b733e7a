/**
 * @module store/archive
 * From bytes to an unpacked directory: compression detected from magic bytes (gzip, zstd, none), the
 * uncompressed stream hashed (a layer's name is the sha256 of its uncompressed tar, as OCI's diff_id) and
 * capped, entries handed to a LayerWriter. Zip bundles go through yauzl into the same LayerWriter.
 *
 * Contract: `unpackTar` / `unpackZip` write into `root` (an existing empty directory) and either resolve
 * with the digest and stats, or reject with InvalidRequest (malformed/hostile; `details.reason`) or
 * PayloadTooLarge (a cap crossed; `details.limitBytes`). On rejection `root` holds a partial tree that the
 * caller removes (layer-store.ts does so with its temp dirs).
 */
import { createHash } from 'node:crypto';
import { createRequire } from 'node:module';
import { Readable } from 'node:stream';
import { createGunzip } from 'node:zlib';
import { Decompress as ZstdDecompress } from 'fzstd';
import { InvalidRequest, PayloadTooLarge } from '../common/errors.ts';
import { LayerWriter, type LayerStats, type LayerWriterOptions } from './layer-writer.ts';
import { readTar, type TarEntry } from './tar.ts';

export type Compression = 'gzip' | 'zstd' | 'none';
export type BundleFormat = 'zip' | 'tar.gz' | 'tar';

/** gzip: RFC 1952 ID1 ID2; zstd: RFC 8878 frame magic 0xFD2FB528 little-endian. */
export function detectCompression(head: Uint8Array): Compression {
  if (head.length >= 2 && head[0] === 0x1f && head[1] === 0x8b) return 'gzip';
  if (head.length >= 4 && head[0] === 0x28 && head[1] === 0xb5 && head[2] === 0x2f && head[3] === 0xfd) return 'zstd';
  return 'none';
}

/** A function bundle's format from its first bytes (the name is never trusted). */
export function detectBundleFormat(head: Uint8Array): BundleFormat | null {
  // zip local file header "PK\3\4", or "PK\5\6" for an empty archive (APPNOTE 4.3.7 / 4.3.16)
  if (head.length >= 4 && head[0] === 0x50 && head[1] === 0x4b && (head[2] === 3 || head[2] === 5) && (head[3] === 4 || head[3] === 6)) return 'zip';
  if (detectCompression(head) === 'gzip') return 'tar.gz';
  // POSIX tar: "ustar" at offset 257
  if (head.length >= 262 && Buffer.from(head.subarray(257, 262)).toString('latin1') === 'ustar') return 'tar';
  return null;
}

export interface UnpackLimits {
  /** cap on the uncompressed bytes (tar stream, or sum of zip entries' data). */
  maxBytes: number;
  maxEntries: number;
}

export interface UnpackResult {
  /** `sha256:<hex>` of the uncompressed tar stream (for zip: of the zip bytes). */
  digest: string;
  /** bytes of the uncompressed stream. */
  uncompressedBytes: number;
  stats: LayerStats;
}

function tooLarge(limit: number): PayloadTooLarge {
  return new PayloadTooLarge(`archive unpacks to more than ${limit} bytes`, { reason: 'unpacked-size', limitBytes: limit });
}

async function* chunked(buf: Buffer): AsyncGenerator<Buffer> {
  // 1 MiB slices keep hashing, decompression and writes interleaved for big in-memory inputs
  for (let i = 0; i < buf.length; i += 1 << 20) yield buf.subarray(i, i + (1 << 20));
}

export function toChunks(src: Buffer | AsyncIterable<Buffer>): AsyncIterable<Buffer> {
  return Buffer.isBuffer(src) ? chunked(src) : src;
}

async function* gunzip(src: AsyncIterable<Buffer>): AsyncGenerator<Buffer> {
  // 256 KiB output chunks instead of zlib's 16 KiB default: a sixteenth of the per-chunk async hops downstream
  const z = createGunzip({ chunkSize: 1 << 18 });
  const input = Readable.from(src);
  input.on('error', (e) => z.destroy(e));
  input.pipe(z);
  try {
    for await (const c of z) yield c as Buffer;
  } catch (e) {
    if (e instanceof InvalidRequest || e instanceof PayloadTooLarge) throw e;
    const code = (e as NodeJS.ErrnoException).code;
    throw new InvalidRequest(`gzip stream is corrupt or truncated (${code ?? (e as Error).message})`,
      { reason: code === 'Z_BUF_ERROR' ? 'truncated' : 'bad-compression' }, { cause: e });
  } finally {
    input.destroy();
    z.destroy();
  }
}

async function* unzstd(src: AsyncIterable<Buffer>): AsyncGenerator<Buffer> {
  const out: Buffer[] = [];
  const d = new ZstdDecompress((data) => { out.push(Buffer.from(data.buffer, data.byteOffset, data.byteLength)); });
  try {
    for await (const c of src) {
      d.push(c);
      while (out.length) yield out.shift()!;
    }
    d.push(new Uint8Array(0), true);
  } catch (e) {
    if (e instanceof InvalidRequest || e instanceof PayloadTooLarge) throw e;
    throw new InvalidRequest(`zstd stream is corrupt or truncated (${(e as Error).message})`, { reason: 'bad-compression' }, { cause: e });
  }
  while (out.length) yield out.shift()!;
}

/** peeks the first chunk to pick the decompressor; the peeked chunk is replayed. */
export async function decompress(src: AsyncIterable<Buffer>): Promise<{ compression: Compression; stream: AsyncIterable<Buffer> }> {
  const it = src[Symbol.asyncIterator]();
  const first = await it.next();
  const head: Buffer = first.done ? Buffer.alloc(0) : first.value;
  const replay: AsyncIterable<Buffer> = {
    [Symbol.asyncIterator]: async function* () {
      if (head.length) yield head;
      for (;;) {
        const r = await it.next();
        if (r.done) return;
        yield r.value;
      }
    },
  };
  const compression = detectCompression(head);
  const stream = compression === 'gzip' ? gunzip(replay) : compression === 'zstd' ? unzstd(replay) : replay;
  return { compression, stream };
}

/** hashes and counts a stream, throwing PayloadTooLarge the moment the cap is crossed. */
function metered(src: AsyncIterable<Buffer>, maxBytes: number) {
  const hash = createHash('sha256');
  const state = { bytes: 0 };
  async function* stream(): AsyncGenerator<Buffer> {
    for await (const c of src) {
      state.bytes += c.length;
      if (state.bytes > maxBytes) throw tooLarge(maxBytes);
      hash.update(c);
      yield c;
    }
  }
  return { state, stream: stream(), digest: () => `sha256:${hash.digest('hex')}` };
}

/**
 * Unpacks a (possibly gzip/zstd compressed) tar into `root`.
 *
 * @example
 * const { digest } = await unpackTar(fs.createReadStream('layer.tar.gz'), '/store/tmp/x', { kind: 'image' }, { maxBytes: 1e9, maxEntries: 1e6 });
 */
export async function unpackTar(
  src: Buffer | AsyncIterable<Buffer>,
  root: string,
  kind: LayerWriterOptions['kind'],
  limits: UnpackLimits,
): Promise<UnpackResult & { compression: Compression }> {
  const { compression, stream } = await decompress(toChunks(src));
  const m = metered(stream, limits.maxBytes);
  const w = new LayerWriter(root, { kind, maxEntries: limits.maxEntries });
  await readTar(m.stream, (e, body) => w.apply(e, body));
  await w.seal();
  return { digest: m.digest(), uncompressedBytes: m.state.bytes, stats: w.stats, compression };
}

// --- zip --------------------------------------------------------------------------------------------

interface YauzlEntry {
  fileName: Buffer;
  externalFileAttributes: number;
  uncompressedSize: number;
  compressedSize: number;
  generalPurposeBitFlag: number;
  compressionMethod: number;
}
interface YauzlZip {
  entryCount: number;
  readEntry(): void;
  openReadStream(e: YauzlEntry, cb: (err: Error | null, s?: Readable) => void): void;
  on(ev: 'entry', cb: (e: YauzlEntry) => void): void;
  on(ev: 'end', cb: () => void): void;
  on(ev: 'error', cb: (e: Error) => void): void;
  close(): void;
}
interface Yauzl {
  fromBuffer(b: Buffer, o: Record<string, unknown>, cb: (err: Error | null, z?: YauzlZip) => void): void;
}
// yauzl ships no types and @types/yauzl is not a dependency; this is the slice of its API we use.
const yauzl = createRequire(import.meta.url)('yauzl') as Yauzl;

/** unix mode bits of a zip entry (made by unix: external attributes' high 16 bits), 0 when absent. */
function zipMode(e: YauzlEntry): number {
  return (e.externalFileAttributes >>> 16) & 0xffff;
}

/**
 * Unpacks a zip bundle into `root` with the same rules as a tar (paths, symlinks, caps).
 * The digest is the sha256 of the zip bytes.
 */
export async function unpackZip(buf: Buffer, root: string, limits: UnpackLimits): Promise<UnpackResult> {
  const zip = await new Promise<YauzlZip>((resolve, reject) => {
    // decodeStrings:false hands us raw names so that our own path rules (not yauzl's) decide and report.
    yauzl.fromBuffer(buf, { lazyEntries: true, decodeStrings: false, validateEntrySizes: true }, (err, z) => {
      if (err || !z) reject(new InvalidRequest(`not a valid zip archive: ${err?.message}`, { reason: 'bad-zip' }, { cause: err }));
      else resolve(z);
    });
  });
  const w = new LayerWriter(root, { kind: 'bundle', maxEntries: limits.maxEntries });
  let total = 0;
  try {
    await new Promise<void>((resolve, reject) => {
      zip.on('error', (e) => reject(e instanceof InvalidRequest ? e : new InvalidRequest(`corrupt zip archive: ${e.message}`, { reason: 'bad-zip' }, { cause: e })));
      zip.on('end', () => resolve());
      zip.on('entry', (ze: YauzlEntry) => {
        (async () => {
          const name = ze.fileName.toString('utf8').replace(/\\/g, '/');
          const ftype = zipMode(ze) & 0o170000;
          const isDir = name.endsWith('/') || ftype === 0o040000;
          const isLink = ftype === 0o120000;
          if (ftype === 0o020000 || ftype === 0o060000) {
            // let the writer refuse it with its device-node rule
            await w.apply(entry(name, 'char', 0, ''), empty());
          }
          if (ze.uncompressedSize > limits.maxBytes - total) throw tooLarge(limits.maxBytes);
          const stream = isDir ? null : await new Promise<Readable>((res, rej) => zip.openReadStream(ze, (e, s) => (e || !s ? rej(new InvalidRequest(`corrupt zip entry ${name}: ${e?.message}`, { reason: 'bad-zip' })) : res(s))));
          const counted = async function* (): AsyncGenerator<Buffer> {
            if (!stream) return;
            try {
              for await (const c of stream) {
                total += (c as Buffer).length;
                if (total > limits.maxBytes) throw tooLarge(limits.maxBytes);
                yield c as Buffer;
              }
            } catch (e) {
              if (e instanceof PayloadTooLarge) throw e;
              throw new InvalidRequest(`corrupt zip entry ${name}: ${(e as Error).message}`, { reason: 'bad-zip' }, { cause: e });
            } finally {
              stream.destroy();
            }
          };
          if (isLink) {
            let target = '';
            for await (const c of counted()) target += c.toString('utf8');
            await w.apply(entry(name, 'symlink', 0o777, target), empty());
          } else {
            await w.apply(entry(name, isDir ? 'dir' : 'file', zipMode(ze) & 0o7777 || (isDir ? 0o755 : 0o644), '', ze.uncompressedSize), counted());
          }
          zip.readEntry();
        })().catch(reject);
      });
      zip.readEntry();
    });
  } finally {
    zip.close();
  }
  return { digest: `sha256:${createHash('sha256').update(buf).digest('hex')}`, uncompressedBytes: total, stats: w.stats };
}

function entry(path: string, type: TarEntry['type'], mode: number, linkname: string, size = 0): TarEntry {
  return { path, type, mode, uid: 0, gid: 0, size, linkname, mtime: 0, devmajor: 0, devminor: 0 };
}

async function* empty(): AsyncGenerator<Buffer> { /* no body */ }
