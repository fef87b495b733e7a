/**
 * @module store/image-store
 * The `ImageStore` of services/store/types.ts over two layer stores:
 * - the base store (FNHOST_BASE_DIR, default /var/lib/fnhost/base): base images, read by everyone,
 *   written by infra/build-images.sh;
 * - the state store (FNHOST_STATE_DIR, default /var/lib/fnhost/state): tenants' imported images
 *   (`images/<tenant>/<name>.json`), their layers, and function code layers (`code/<hex>`).
 *
 * Leases: `lease()` pins layers for a running sandbox. The pin is kept in memory and in a lease file
 * (`<state>/leases/<pid>-<n>.json`) so that a gc run by another process on the same host (the CLI, another
 * service) sees it too; files of dead pids are ignored and removed. gc also spares anything younger than
 * `gcGraceMs`, because an import in another process renames its layers in before it writes the image
 * record that references them.
 */
import { createHash } from 'node:crypto';
import { mkdirSync, rmSync, writeFileSync } from 'node:fs';
import * as fsp from 'node:fs/promises';
import { join } from 'node:path';
import { Conflict, InvalidRequest, NotFound, PayloadTooLarge } from '../common/errors.ts';
import { detectBundleFormat } from './archive.ts';
import { BASE_IMAGE_NAMES, DEFAULT_BASE_DIR } from './base-images.ts';
import { ImageRecords, checkName, type ImageRecord } from './image-records.ts';
import { LayerStore, digestHex } from './layer-store.ts';
import { importOci, type ImportLimits } from './oci-import.ts';
import type { CodeLayer, ImageStore, ImageSummary, ResolvedImage } from './types.ts';

export const DEFAULT_STATE_DIR = '/var/lib/fnhost/state';

export interface ImageStoreOptions {
  /** base images (default FNHOST_BASE_DIR or /var/lib/fnhost/base). */
  baseDir?: string;
  /** imported images and code layers (default FNHOST_STATE_DIR or /var/lib/fnhost/state). */
  stateDir?: string;
  /** bundle caps: 50 MB compressed / 250 MB unpacked by default (AWS Lambda's zip deployment limits). */
  bundleMaxBytes?: number;
  bundleMaxUnpackedBytes?: number;
  /** cap on one imported image's unpacked layers (default 8 GiB) and on its source archive. */
  imageMaxUnpackedBytes?: number;
  /** entries per archive (default 1,000,000: a full Debian image has ~10,000). */
  maxEntries?: number;
  /** gc spares layers younger than this (default 10 min; tests pass 0). */
  gcGraceMs?: number;
  /** gc also prunes base-store layers no base image references (left by rebuilds). Off by default: the base
   *  store is shared by every state dir on the host, and leases live in each state dir. */
  gcBaseStore?: boolean;
}

const MB = 1024 * 1024;

/**
 * Opens (creating directories as needed) the image store.
 *
 * @example
 * const store = await openImageStore();
 * const node = await store.resolve('node');            // { layers: ['/var/lib/fnhost/base/layers/…', …], config, … }
 * const code = await store.addBundle(zipBytes);          // { digest, dir, sizeBytes }
 * const release = store.lease([...node.layers, code.dir]);  // while a sandbox uses them
 */
export async function openImageStore(opts: ImageStoreOptions = {}): Promise<FsImageStore> {
  const s = new FsImageStore(opts);
  await s.init();
  return s;
}

export class FsImageStore implements ImageStore {
  readonly base: LayerStore;
  readonly state: LayerStore;
  private readonly baseImages: ImageRecords;
  private readonly leases = new Map<string, number>();
  private leaseSeq = 0;
  private readonly leaseDir: string;
  private readonly limits: Required<Omit<ImageStoreOptions, 'baseDir' | 'stateDir'>>;

  constructor(opts: ImageStoreOptions) {
    const baseDir = opts.baseDir ?? process.env.FNHOST_BASE_DIR ?? DEFAULT_BASE_DIR;
    const stateDir = opts.stateDir ?? process.env.FNHOST_STATE_DIR ?? DEFAULT_STATE_DIR;
    this.base = new LayerStore(baseDir);
    this.state = new LayerStore(stateDir);
    this.baseImages = new ImageRecords(join(baseDir, 'images'));
    this.leaseDir = join(stateDir, 'leases');
    this.limits = {
      bundleMaxBytes: opts.bundleMaxBytes ?? 50 * MB,
      bundleMaxUnpackedBytes: opts.bundleMaxUnpackedBytes ?? 250 * MB,
      imageMaxUnpackedBytes: opts.imageMaxUnpackedBytes ?? 8192 * MB,
      maxEntries: opts.maxEntries ?? 1_000_000,
      gcGraceMs: opts.gcGraceMs ?? 10 * 60 * 1000,
      gcBaseStore: opts.gcBaseStore ?? false,
    };
  }

  async init(): Promise<void> {
    await this.state.init();
    await fsp.mkdir(join(this.state.root, 'images'), { recursive: true });
    await fsp.mkdir(this.leaseDir, { recursive: true });
    // the base store may be read-only to us or not built yet; resolve() reports NotFound then
    await fsp.mkdir(join(this.base.root, 'layers'), { recursive: true }).catch(() => {});
  }

  private tenantImages(tenant: string): ImageRecords {
    checkName(tenant, 'tenant');
    return new ImageRecords(join(this.state.root, 'images', tenant));
  }

  private toResolved(ref: string, rec: ImageRecord, store: LayerStore): ResolvedImage {
    return {
      ref,
      digest: rec.digest,
      layers: rec.layers.map((d) => store.dir(d)),
      layerDigests: rec.layers,
      config: rec.config,
    };
  }

  async resolve(ref: string, tenant?: string): Promise<ResolvedImage> {
    if ((BASE_IMAGE_NAMES as readonly string[]).includes(ref)) {
      const rec = await this.baseImages.get(ref).catch((e) => {
        if (e instanceof NotFound) throw new NotFound(`base image ${ref} is not built (run infra/build-images.sh)`, { image: ref });
        throw e;
      });
      return this.toResolved(ref, rec, this.base);
    }
    if (!tenant) throw new NotFound(`image ${JSON.stringify(ref)} not found`, { image: ref });
    checkName(ref, 'image name');
    return this.toResolved(ref, await this.tenantImages(tenant).get(ref), this.state);
  }

  async addBundle(bundle: Buffer): Promise<CodeLayer> {
    if (bundle.length > this.limits.bundleMaxBytes) {
      throw new PayloadTooLarge(`bundle is ${bundle.length} bytes; the limit is ${this.limits.bundleMaxBytes}`,
        { reason: 'bundle-size', limitBytes: this.limits.bundleMaxBytes, sizeBytes: bundle.length });
    }
    const format = detectBundleFormat(bundle.subarray(0, 512));
    if (!format) throw new InvalidRequest('bundle is neither a zip nor a tar.gz archive', { field: 'bundle', reason: 'bad-format' });
    const r = await this.state.addBundle(bundle, format, { maxBytes: this.limits.bundleMaxUnpackedBytes, maxEntries: this.limits.maxEntries });
    return { digest: r.digest, dir: r.dir, sizeBytes: r.sizeBytes };
  }

  async codeLayer(digest: string): Promise<CodeLayer> {
    if (!digestHex(digest)) throw new NotFound(`code layer ${digest} not found`, { digest });
    // on a cold start's path: synchronous lookup first (LayerStore.metaSync), the pool only for a layer without metadata
    let meta = this.state.metaSync(digest, 'code');
    if (!meta) {
      if (!(await this.state.has(digest, 'code'))) throw new NotFound(`code layer ${digest} not found`, { digest });
      meta = await this.state.meta(digest, 'code');
    }
    return { digest: `sha256:${digestHex(digest)}`, dir: this.state.dir(digest, 'code'), sizeBytes: meta.sizeBytes };
  }

  async importImage(tenant: string, name: string, source: Buffer | string): Promise<ResolvedImage> {
    const records = this.tenantImages(tenant);
    checkName(name, 'image name');
    if ((BASE_IMAGE_NAMES as readonly string[]).includes(name)) {
      throw new Conflict(`${name} is a base image name; import under another name`, { field: 'name', image: name });
    }
    const limits: ImportLimits = { maxBytes: this.limits.imageMaxUnpackedBytes, maxEntries: this.limits.maxEntries };
    const imported = await importOci(this.state, source, limits);
    const rec: ImageRecord = {
      name, digest: imported.digest, layers: imported.layers, config: imported.config, sizeBytes: imported.sizeBytes,
      base: false, createdAt: new Date().toISOString(), source: imported.source,
    };
    await records.put(name, rec);
    return this.toResolved(name, rec, this.state);
  }

  async listImages(tenant: string): Promise<ImageSummary[]> {
    const summary = (r: ImageRecord): ImageSummary => ({ name: r.name, digest: r.digest, layers: r.layers.length, sizeBytes: r.sizeBytes, base: r.base });
    return [...(await this.baseImages.list()).map(summary), ...(await this.tenantImages(tenant).list()).map(summary)];
  }

  discardCode(digest: string): Promise<boolean> {
    const hex = digestHex(digest);
    if (!hex) return Promise.reject(new InvalidRequest(`not a code digest: ${JSON.stringify(digest)}`, { field: 'digest' }));
    if (this.leases.has(hex)) return Promise.resolve(false);
    return this.state.remove(`sha256:${hex}`, 'code'); // its synchronous part takes the layer out of the tree
  }

  async deleteImage(tenant: string, name: string): Promise<void> {
    if ((BASE_IMAGE_NAMES as readonly string[]).includes(name)) throw new Conflict(`${name} is a base image and cannot be deleted`, { image: name });
    await this.tenantImages(tenant).delete(name);
  }

  /**
   * Pins layers (digests `sha256:<hex>`, bare hex, or layer/code directories as returned by resolve()
   * and addBundle()) against gc until the returned function is called (idempotent).
   */
  lease(digests: string[]): () => void {
    const hexes = digests.map((d) => {
      const h = digestHex(d);
      if (!h) throw new InvalidRequest(`cannot lease ${JSON.stringify(d)}: not a layer digest or directory`, { field: 'digests' });
      return h;
    });
    for (const h of hexes) this.leases.set(h, (this.leases.get(h) ?? 0) + 1);
    const file = join(this.leaseDir, `${process.pid}-${++this.leaseSeq}.json`);
    try {
      mkdirSync(this.leaseDir, { recursive: true });
      writeFileSync(file, JSON.stringify(hexes));
    } catch {
      // the in-memory pin still protects against this process's gc; other processes' gc also spares
      // layers younger than gcGraceMs. A read-only state dir must not fail a sandbox start.
    }
    let released = false;
    return () => {
      if (released) return;
      released = true;
      for (const h of hexes) {
        const n = (this.leases.get(h) ?? 1) - 1;
        if (n <= 0) this.leases.delete(h);
        else this.leases.set(h, n);
      }
      rmSync(file, { force: true });
    };
  }

  /** hexes pinned by this process or by live processes' lease files (dead ones' files are removed). */
  private async leasedHexes(): Promise<Set<string>> {
    const out = new Set(this.leases.keys());
    for (const f of await fsp.readdir(this.leaseDir).catch(() => [] as string[])) {
      const pid = Number(f.split('-')[0]);
      if (pid === process.pid) continue;
      if (!pidAlive(pid)) {
        await fsp.rm(join(this.leaseDir, f), { force: true });
        continue;
      }
      const hexes = JSON.parse(await fsp.readFile(join(this.leaseDir, f), 'utf8').catch(() => '[]')) as string[];
      for (const h of hexes) out.add(h);
    }
    return out;
  }

  async gc(keep: Set<string>): Promise<{ removed: string[] }> {
    const keepHex = new Set([...keep].map((d) => digestHex(d)).filter((h): h is string => !!h));
    const leased = await this.leasedHexes();
    const now = Date.now();
    const removed: string[] = [];
    const spare = (hex: string, mtimeMs: number) => keepHex.has(hex) || leased.has(hex) || now - mtimeMs < this.limits.gcGraceMs;

    const stateRefs = new Set<string>();
    for (const t of await fsp.readdir(join(this.state.root, 'images')).catch(() => [] as string[])) {
      const recs = await this.tenantImages(t).list().catch(() => [] as ImageRecord[]);
      for (const r of recs) for (const l of r.layers) stateRefs.add(digestHex(l)!);
    }
    const baseRefs = new Set<string>();
    for (const r of await this.baseImages.list()) for (const l of r.layers) baseRefs.add(digestHex(l)!);

    const stores: Array<[LayerStore, Set<string>]> = [[this.state, stateRefs]];
    if (this.limits.gcBaseStore) stores.push([this.base, baseRefs]);
    for (const [store, refs] of stores) {
      for (const l of await store.list('layers')) {
        const hex = digestHex(l.digest)!;
        if (refs.has(hex) || spare(hex, l.mtimeMs)) continue;
        await store.remove(l.digest, 'layers');
        removed.push(l.digest);
      }
    }
    for (const c of await this.state.list('code')) {
      if (spare(digestHex(c.digest)!, c.mtimeMs)) continue;
      await this.state.remove(c.digest, 'code');
      removed.push(c.digest);
    }
    return { removed };
  }
}

function pidAlive(pid: number): boolean {
  if (!Number.isInteger(pid) || pid <= 0) return false;
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** sha256 of a buffer as `sha256:<hex>` (the code digest of a bundle, as addBundle names it). */
export function bundleDigest(bundle: Buffer): string {
  return `sha256:${createHash('sha256').update(bundle).digest('hex')}`;
}
