/**
 * @module store/layer-store
 * Content-addressed, unpacked layers on disk:
 *
 *   <root>/layers/<hex>/       the layer's tree, named by the sha256 of its uncompressed tar (OCI diff_id)
 *   <root>/layers/<hex>.json   {sizeBytes, entries, ...} written before the directory appears
 *   <root>/code/<hex>/         function code layers, named by the sha256 of the bundle as uploaded
 *   <root>/tmp/                where everything is unpacked first
 *
 * Atomicity: a tree is unpacked into tmp/ and then rename(2)d into place, so a directory under layers/
 * is always complete; a crash mid-unpack leaves only a tmp/ entry, removed by the next open. Two writers
 * racing on the same digest both unpack; the first rename wins and the loser drops its copy.
 * Layers are never modified once in place: the sandbox mounts them as read-only overlay lower dirs.
 * Removal is two-phase (detach(), then restore() or drop()) so a remover can re-check after the layer is out of
 * the tree; a writer that finds its layer already here touches it (reuse()), which a remover sees.
 *
 * @example
 * const layers = new LayerStore('/var/lib/fnhost/state');
 * await layers.init();
 * const { digest, dir } = await layers.addTar(fs.createReadStream('layer.tar.gz'), { maxBytes: 1 << 30, maxEntries: 1e6 }, diffId);
 */
import { createHash, randomBytes } from 'node:crypto';
import { createReadStream, readFileSync, renameSync, rmSync, statSync, utimesSync } from 'node:fs';
import * as fsp from 'node:fs/promises';
import { join } from 'node:path';
import { InvalidRequest, NotFound } from '../common/errors.ts';
import { unpackTar, unpackZip, toChunks, type UnpackLimits } from './archive.ts';
import { END_OF_ARCHIVE, padding, tarHeader } from './tar.ts';

export type Section = 'layers' | 'code';

export interface LayerMeta {
  digest: string;
  sizeBytes: number;
  entries: number;
  whiteouts?: number;
  strippedSetid?: number;
  createdAt: string;
}

export interface AddedLayer {
  digest: string;
  dir: string;
  sizeBytes: number;
  /** true when the layer was already in the store (nothing was written). */
  existed: boolean;
}

const HEX64 = /^[0-9a-f]{64}$/;

/** `sha256:<hex>`, `<hex>` or a layer directory path → `<hex>`; null when it is none of these. */
export function digestHex(d: string): string | null {
  const s = d.startsWith('sha256:') ? d.slice(7) : d.includes('/') ? d.slice(d.lastIndexOf('/') + 1) : d;
  return HEX64.test(s) ? s : null;
}

/** tmp/ entries older than this are leftovers of a crashed writer (no import takes an hour to unpack one layer here). */
const STALE_TMP_MS = 60 * 60 * 1000;

export class LayerStore {
  constructor(readonly root: string) {}

  async init(): Promise<void> {
    for (const d of ['layers', 'code', 'tmp']) await fsp.mkdir(join(this.root, d), { recursive: true, mode: 0o755 });
    const now = Date.now();
    for (const name of await fsp.readdir(join(this.root, 'tmp'))) {
      const p = join(this.root, 'tmp', name);
      const st = await fsp.lstat(p).catch(() => null);
      if (st && now - st.mtimeMs > STALE_TMP_MS) await fsp.rm(p, { recursive: true, force: true });
    }
  }

  dir(digest: string, section: Section = 'layers'): string {
    const hex = digestHex(digest);
    if (!hex) throw new InvalidRequest(`not a sha256 digest: ${JSON.stringify(digest)}`, { field: 'digest' });
    return join(this.root, section, hex);
  }

  /**
   * Whether a layer is in the store, for a writer about to depend on it (the "existed" paths of addTar, addBundle,
   * addDir): it also touches the layer's mtime, which gc's grace period reads, so a layer just reused counts as
   * young. Touch first, then trust: a remover that detaches the layer after this sees the fresh mtime (detach
   * reads it after its rename) and puts it back; one that detached it before makes the touch fail, and the
   * writer unpacks its own copy.
   */
  private reuse(digest: string, section: Section): boolean {
    const dir = this.dir(digest, section);
    const now = new Date();
    try {
      utimesSync(dir, now, now);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return false;
      throw e;
    }
    return statSync(dir, { throwIfNoEntry: false })?.isDirectory() ?? false;
  }

  async has(digest: string, section: Section = 'layers'): Promise<boolean> {
    return (await fsp.stat(this.dir(digest, section)).catch(() => null))?.isDirectory() ?? false;
  }

  async meta(digest: string, section: Section = 'layers'): Promise<LayerMeta> {
    const dir = this.dir(digest, section);
    try {
      return JSON.parse(await fsp.readFile(`${dir}.json`, 'utf8')) as LayerMeta;
    } catch {
      if (!(await this.has(digest, section))) throw new NotFound(`layer ${digest} is not in the store`, { digest });
      const { sizeBytes, entries } = await treeSize(dir);
      return { digest: `sha256:${digestHex(digest)}`, sizeBytes, entries, createdAt: new Date(0).toISOString() };
    }
  }

  /**
   * meta() without the thread pool, or null when the layer is not in the store; its recorded metadata
   * must exist (else null too: the caller falls back to meta()). For the cold-start path: a stat and a read
   * of a ~150-byte file cost tens of µs on the event loop, where fsp.stat + fsp.readFile are five round
   * trips through libuv's pool (0.5–0.7 ms of a cold start measured here, /tmp/fnhost-notes/old/s2/coldpath.md).
   */
  metaSync(digest: string, section: Section = 'layers'): LayerMeta | null {
    const dir = this.dir(digest, section);
    if (!statSync(dir, { throwIfNoEntry: false })?.isDirectory()) return null;
    try {
      return JSON.parse(readFileSync(`${dir}.json`, 'utf8')) as LayerMeta;
    } catch {
      return null;
    }
  }

  /** a fresh empty directory under tmp/ (same filesystem as the store, so rename works). */
  async tempDir(tag: string): Promise<string> {
    const p = join(this.root, 'tmp', `${tag}-${process.pid}-${randomBytes(6).toString('hex')}`);
    await fsp.mkdir(p, { mode: 0o755 });
    return p;
  }

  /**
   * Unpacks a layer tar (plain, gzip or zstd) into the store.
   * `expectDiffId` (uncompressed digest) is checked after unpacking; a mismatch is InvalidRequest
   * `{reason: 'digest-mismatch'}` and nothing is kept.
   */
  async addTar(src: Buffer | AsyncIterable<Buffer>, limits: UnpackLimits, expectDiffId?: string, expectBlobDigest?: string): Promise<AddedLayer> {
    if (expectDiffId && this.reuse(expectDiffId, 'layers')) {
      // content addressing: the same diff_id is the same tree; skip the unpack (the warm import path)
      return { digest: expectDiffId, dir: this.dir(expectDiffId), sizeBytes: (await this.meta(expectDiffId)).sizeBytes, existed: true };
    }
    const tmp = await this.tempDir('layer');
    try {
      // the blob digest (compressed bytes, as the manifest names them) is hashed in the same pass
      const blobHash = createHash('sha256');
      const hashed = (async function* () {
        for await (const c of toChunks(src)) {
          blobHash.update(c);
          yield c;
        }
      })();
      const r = await unpackTar(hashed, tmp, 'image', limits);
      const blob = `sha256:${blobHash.digest('hex')}`;
      if (expectBlobDigest && blob !== expectBlobDigest) {
        throw new InvalidRequest('layer blob digest does not match the image manifest', { reason: 'digest-mismatch', expected: expectBlobDigest, actual: blob });
      }
      if (expectDiffId && r.digest !== expectDiffId) {
        throw new InvalidRequest('layer digest does not match the image manifest', { reason: 'digest-mismatch', expected: expectDiffId, actual: r.digest });
      }
      return await this.commit(tmp, 'layers', {
        digest: r.digest, sizeBytes: r.stats.sizeBytes, entries: r.stats.entries, whiteouts: r.stats.whiteouts,
        strippedSetid: r.stats.strippedSetid, createdAt: new Date().toISOString(),
      });
    } finally {
      await fsp.rm(tmp, { recursive: true, force: true });
    }
  }

  /** Unpacks a function bundle (zip, tar.gz or tar) as a code layer named by the bundle's sha256. */
  async addBundle(buf: Buffer, format: 'zip' | 'tar.gz' | 'tar', limits: UnpackLimits): Promise<AddedLayer> {
    const digest = `sha256:${createHash('sha256').update(buf).digest('hex')}`;
    if (this.reuse(digest, 'code')) {
      return { digest, dir: this.dir(digest, 'code'), sizeBytes: (await this.meta(digest, 'code')).sizeBytes, existed: true };
    }
    const tmp = await this.tempDir('code');
    try {
      const r = format === 'zip' ? await unpackZip(buf, tmp, limits) : await unpackTar(buf, tmp, 'bundle', limits);
      return await this.commit(tmp, 'code', { digest, sizeBytes: r.stats.sizeBytes, entries: r.stats.entries, createdAt: new Date().toISOString() });
    } finally {
      await fsp.rm(tmp, { recursive: true, force: true });
    }
  }

  /**
   * Moves a directory built by the caller (under tempDir()) into the store, named by the sha256 of its
   * deterministic tar (see dirDigest). The directory is consumed. `pin` is called with the digest before the
   * store is looked at (a caller that must keep the layer from being removed under it pins it there).
   */
  async addDir(staging: string, pin?: (digest: string) => void): Promise<AddedLayer> {
    const { digest, sizeBytes, entries } = await dirDigest(staging);
    pin?.(digest); // before the lookup: see FsImageStore's removal rule
    if (this.reuse(digest, 'layers')) {
      await fsp.rm(staging, { recursive: true, force: true });
      return { digest, dir: this.dir(digest), sizeBytes, existed: true };
    }
    return this.commit(staging, 'layers', { digest, sizeBytes, entries, createdAt: new Date().toISOString() });
  }

  /** meta first, then the tree: a tree in place always has its meta. */
  private async commit(tmp: string, section: Section, meta: LayerMeta): Promise<AddedLayer> {
    const dir = this.dir(meta.digest, section);
    const metaTmp = `${tmp}.json`;
    await fsp.writeFile(metaTmp, JSON.stringify(meta));
    await fsp.rename(metaTmp, `${dir}.json`);
    try {
      // the layer root: 0755 root-owned, whatever the archive said (it is the sandbox's "/" or /var/task)
      await fsp.chmod(tmp, 0o755);
      await fsp.rename(tmp, dir);
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      if (code !== 'ENOTEMPTY' && code !== 'EEXIST') throw e;
      return { digest: meta.digest, dir, sizeBytes: meta.sizeBytes, existed: true };
    }
    return { digest: meta.digest, dir, sizeBytes: meta.sizeBytes, existed: false };
  }

  async list(section: Section = 'layers'): Promise<Array<{ digest: string; dir: string; mtimeMs: number }>> {
    const out: Array<{ digest: string; dir: string; mtimeMs: number }> = [];
    for (const name of await fsp.readdir(join(this.root, section)).catch(() => [] as string[])) {
      if (!HEX64.test(name)) continue;
      const st = await fsp.lstat(join(this.root, section, name)).catch(() => null);
      if (st?.isDirectory()) out.push({ digest: `sha256:${name}`, dir: join(this.root, section, name), mtimeMs: st.mtimeMs });
    }
    return out;
  }

  /**
   * Removes a layer: detach() then drop(). The layer disappears at once for every later lookup of this process
   * (before the returned promise's first turn); the tree is deleted afterwards (a crash before that leaves it to
   * the start-up sweep of tmp/). false when it was not there.
   */
  async remove(digest: string, section: Section = 'layers'): Promise<boolean> {
    const d = this.detach(digest, section);
    if (!d) return false;
    await d.drop();
    return true;
  }

  /**
   * Takes a layer out of the tree synchronously (tree and metadata renamed into tmp/, in this call's turn), so a
   * caller that checked in the same turn that nothing of this process wants it leaves no window for a new user.
   * The caller then re-checks what it cannot see synchronously (other processes' leases, records on disk) and
   * either restore()s the layer or drop()s it. null when the layer was not there.
   */
  detach(digest: string, section: Section = 'layers'): DetachedLayer | null {
    const dir = this.dir(digest, section);
    const gone = join(this.root, 'tmp', `gc-${randomBytes(6).toString('hex')}`);
    try {
      renameSync(dir, gone);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
      rmSync(`${dir}.json`, { force: true });
      return null;
    }
    // after the rename (which keeps it): a reuse() that touched the layer before it is seen, one after it failed
    const st = statSync(gone);
    try {
      renameSync(`${dir}.json`, `${gone}.json`);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e; // a layer written by an older version has none
    }
    // a detached tree keeps its old mtime; another process's init() would sweep it as a crashed writer's
    // leftover (STALE_TMP_MS) while we decide, so it looks fresh until restore() gives its mtime back
    const now = new Date();
    try {
      utimesSync(gone, now, now);
    } catch {
      // only the sweep's age test depends on it
    }
    const drop = async () => {
      await fsp.rm(gone, { recursive: true, force: true });
      await fsp.rm(`${gone}.json`, { force: true });
    };
    return {
      dir,
      mtimeMs: st.mtimeMs,
      drop,
      restore: async () => {
        // commit()'s order: metadata first, then the tree. A writer that re-added the same digest meanwhile
        // filled the slot with the same content: it wins and our copy goes.
        await fsp.rename(`${gone}.json`, `${dir}.json`).catch((e: NodeJS.ErrnoException) => { if (e.code !== 'ENOENT') throw e; });
        await fsp.utimes(gone, st.atime, st.mtime).catch(() => {}); // gc's grace period reads it
        try {
          await fsp.rename(gone, dir);
          return true;
        } catch (e) {
          const code = (e as NodeJS.ErrnoException).code;
          if (code !== 'ENOTEMPTY' && code !== 'EEXIST') throw e;
          await drop();
          return false;
        }
      },
    };
  }
}

/** A layer taken out of the tree by LayerStore.detach(), to be put back or deleted. */
export interface DetachedLayer {
  /** where the layer lived (and lives again after restore()). */
  dir: string;
  /** its mtime when it was taken out: the last time a writer reused it (see LayerStore.reuse). */
  mtimeMs: number;
  /** puts it back; false when a writer re-added the same digest meanwhile (its copy stays, ours is deleted). */
  restore(): Promise<boolean>;
  /** deletes it for good. */
  drop(): Promise<void>;
}

/** sum of regular file sizes and entry count of a tree (lstat, no symlink following). */
export async function treeSize(dir: string): Promise<{ sizeBytes: number; entries: number }> {
  let sizeBytes = 0;
  let entries = 0;
  for (const e of await fsp.readdir(dir, { withFileTypes: true })) {
    entries++;
    const p = join(dir, e.name);
    if (e.isDirectory()) {
      const s = await treeSize(p);
      sizeBytes += s.sizeBytes;
      entries += s.entries;
    } else if (e.isFile()) {
      sizeBytes += (await fsp.lstat(p)).size;
    }
  }
  return { sizeBytes, entries };
}

/**
 * The sha256 of the canonical tar of a directory: entries in byte order of their paths, owner/mode from
 * lstat, mtime 0, hardlinks as links to their first path, overlayfs whiteouts (0:0 char devices) as
 * `.wh.` files. Only hashed, never written. Used to name layers built from directories (base images).
 */
export async function dirDigest(root: string): Promise<{ digest: string; sizeBytes: number; entries: number }> {
  const hash = createHash('sha256');
  const seen = new Map<string, string>();
  let sizeBytes = 0;
  let entries = 0;
  const walk = async (rel: string): Promise<void> => {
    const names = (await fsp.readdir(join(root, rel))).sort((a, b) => Buffer.compare(Buffer.from(a), Buffer.from(b)));
    for (const name of names) {
      const r = rel ? `${rel}/${name}` : name;
      const p = join(root, r);
      const st = await fsp.lstat(p);
      const base = { uid: st.uid, gid: st.gid, mode: st.mode & 0o7777 };
      entries++;
      if (st.isDirectory()) {
        hash.update(tarHeader({ path: r, type: 'dir', ...base }));
        await walk(r);
      } else if (st.isSymbolicLink()) {
        hash.update(tarHeader({ path: r, type: 'symlink', linkname: await fsp.readlink(p), ...base }));
      } else if (st.isCharacterDevice() && st.rdev === 0) {
        hash.update(tarHeader({ path: rel ? `${rel}/.wh.${name}` : `.wh.${name}`, type: 'file', ...base }));
      } else if (st.isFile()) {
        const key = `${st.dev}:${st.ino}`;
        const first = st.nlink > 1 ? seen.get(key) : undefined;
        if (first) {
          hash.update(tarHeader({ path: r, type: 'hardlink', linkname: first, ...base }));
          continue;
        }
        if (st.nlink > 1) seen.set(key, r);
        hash.update(tarHeader({ path: r, type: 'file', size: st.size, ...base }));
        for await (const c of createReadStream(p)) hash.update(c as Buffer);
        hash.update(padding(st.size));
        sizeBytes += st.size;
      } else {
        throw new InvalidRequest(`cannot put ${r} in a layer: not a file, directory or symlink`, { path: r });
      }
    }
  };
  await walk('');
  hash.update(END_OF_ARCHIVE);
  return { digest: `sha256:${hash.digest('hex')}`, sizeBytes, entries };
}

