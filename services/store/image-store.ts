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
 * service) sees it too; files of dead pids are ignored and removed. gc also spares a layer written or reused
 * (LayerStore touches a layer a writer finds in the store) less than `gcGraceMs` ago: that covers writers that
 * do not lease, such as a deploy between finding its code layer and committing its version (the version, in
 * Redis, reaches gc only through the `keep` set its caller read before gc started).
 *
 * Removal (gc, a failed import's new layers, a failed deploy's code layer) never takes a layer from under a
 * user. The rule for users: whoever is about to depend on a layer (an import that will write a record naming
 * it, a sandbox) leases it BEFORE looking for it in the store, and holds the lease until the reference is on
 * disk or the use ends. The rule for removers (`removeUnwanted`): in one synchronous turn, check this
 * process's leases and detach the layer (LayerStore.detach); then read what other processes may have done
 * meanwhile (their lease files, then the records); put it back if anything wants it, else delete it.
 * A user that looked before the detach had leased before it, so the re-check sees its lease (or, if it has
 * already let go, its record); a writer that looks after the detach finds nothing and writes its own copy.
 */
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, rmSync, writeFileSync } from 'node:fs';
import * as fsp from 'node:fs/promises';
import { join } from 'node:path';
import { Conflict, InvalidRequest, NotFound, PayloadTooLarge } from '../common/errors.ts';
import { detectBundleFormat } from './archive.ts';
import { BASE_IMAGE_NAMES, DEFAULT_BASE_DIR } from './base-images.ts';
import { ImageRecords, checkName, type ImageRecord } from './image-records.ts';
import { LayerStore, digestHex, type DetachedLayer, type Section } from './layer-store.ts';
import { importOci, type ImportLimits } from './oci-import.ts';
import { readLeases, writeLease } from './leases.ts';
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
  /**
   * gc also prunes base-store layers no base image references (left by rebuilds). The base store is shared by
   * every state dir on the host: such a gc reads the base store's own lease directory, where every lease of base
   * layers is written too (lease()), whatever its state dir, and where a base build in progress leases its layers
   * until its records are written (./leases.ts). Off by default: a process to which the base store is read-only
   * cannot write there, and its sandboxes' leases of base layers are then invisible to other processes' gc.
   */
  gcBaseStore?: boolean;
}

const MB = 1024 * 1024;
/**
 * resolveLeased's lookups when a layer is missing after the lease: a remover puts a layer back within one
 * lease-file read and one rename of its detach (milliseconds); 4 lookups 10, 20, 30 ms apart cover that
 * under load, and an image that stays broken answers NotFound after ~60 ms.
 */
const RESOLVE_ATTEMPTS = 4;
const RESOLVE_RETRY_MS = 10;

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
  private readonly baseLeaseDir: string;
  private readonly limits: Required<Omit<ImageStoreOptions, 'baseDir' | 'stateDir'>>;

  constructor(opts: ImageStoreOptions) {
    const baseDir = opts.baseDir ?? process.env.FNHOST_BASE_DIR ?? DEFAULT_BASE_DIR;
    const stateDir = opts.stateDir ?? process.env.FNHOST_STATE_DIR ?? DEFAULT_STATE_DIR;
    this.base = new LayerStore(baseDir);
    this.state = new LayerStore(stateDir);
    this.baseImages = new ImageRecords(join(baseDir, 'images'));
    this.leaseDir = join(stateDir, 'leases');
    this.baseLeaseDir = join(baseDir, 'leases');
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
    // lease files of dead processes in the shared base store: gone at the next open (gcBaseStore is off by default,
    // so no gc may read them otherwise)
    await readLeases([this.baseLeaseDir]).catch(() => {});
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

  /**
   * Imports an image (see oci-import.ts). Every layer is leased before the import looks for it and stays
   * leased until the record naming it is written, so a concurrent gc or failed import never removes it; if
   * the import fails anywhere (a refused layer, the record write), the layers it created are removed again
   * unless something else wants them (removeUnwanted: another import reusing one, a record naming one).
   */
  async importImage(tenant: string, name: string, source: Buffer | string): Promise<ResolvedImage> {
    const records = this.tenantImages(tenant);
    checkName(name, 'image name');
    if ((BASE_IMAGE_NAMES as readonly string[]).includes(name)) {
      throw new Conflict(`${name} is a base image name; import under another name`, { field: 'name', image: name });
    }
    const limits: ImportLimits = { maxBytes: this.limits.imageMaxUnpackedBytes, maxEntries: this.limits.maxEntries };
    const pins: Array<() => void> = [];
    const created: string[] = [];
    const releaseAll = () => {
      for (const release of pins) release();
    };
    try {
      const imported = await importOci(this.state, source, limits, {
        pin: (digests) => pins.push(this.lease(digests)),
        created: (digest) => created.push(digest),
      });
      const rec: ImageRecord = {
        name, digest: imported.digest, layers: imported.layers, config: imported.config, sizeBytes: imported.sizeBytes,
        base: false, createdAt: new Date().toISOString(), source: imported.source,
      };
      await records.put(name, rec);
      return this.toResolved(name, rec, this.state);
    } catch (e) {
      // our own leases must not count as "wanted"; another import's or a sandbox's still do
      releaseAll();
      await this.removeUnwanted(this.state, 'layers', created, () => this.stateRefs()).catch(() => {
        // the import's own error is what the caller needs; a layer left behind is gc's
      });
      throw e;
    } finally {
      releaseAll();
    }
  }

  async listImages(tenant: string): Promise<ImageSummary[]> {
    const summary = (r: ImageRecord): ImageSummary => ({ name: r.name, digest: r.digest, layers: r.layers.length, sizeBytes: r.sizeBytes, base: r.base });
    return [...(await this.baseImages.list()).map(summary), ...(await this.tenantImages(tenant).list()).map(summary)];
  }

  discardCode(digest: string): Promise<boolean> {
    const hex = digestHex(digest);
    if (!hex) return Promise.reject(new InvalidRequest(`not a code digest: ${JSON.stringify(digest)}`, { field: 'digest' }));
    // its synchronous part checks this process's leases and takes the layer out of the tree; the caller has checked
    // the references (function versions live in Redis, not here), so the re-check looks at other processes' leases
    return this.removeUnwanted(this.state, 'code', [`sha256:${hex}`], async () => new Set()).then((r) => r.length > 0);
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
    // base layers are shared by every state dir: their lease goes where a gc of the base store from any state dir looks
    const baseLayers = join(this.base.root, 'layers') + '/';
    const baseHexes = hexes.filter((h, i) => (digests[i]!.includes('/') ? digests[i]!.startsWith(baseLayers) : existsSync(baseLayers + h)));
    const releaseBase = baseHexes.length ? writeLease(this.baseLeaseDir, 'lease', baseHexes) : undefined;
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
      releaseBase?.();
    };
  }

  /**
   * resolve() then lease(), then the look that counts: every layer still in the store. A remover that detaches a
   * layer after the lease sees it (this process's pins, or the lease file) and puts the layer back; one that did so
   * before may drop it, and then the image was unreferenced — deleted — so the lookup is made again and answers
   * NotFound. A layer missing while the record still names it (a remover between its detach and its restore) is
   * waited for, briefly. So a sandbox start either mounts leased layers that stay, or gets a clean NotFound.
   */
  async resolveLeased(ref: string, tenant?: string): Promise<{ image: ResolvedImage; release: () => void }> {
    for (let attempt = 1; ; attempt++) {
      const image = await this.resolve(ref, tenant);
      const release = this.lease(image.layers);
      if (image.layers.every((dir) => existsSync(dir))) return { image, release };
      release();
      if (attempt >= RESOLVE_ATTEMPTS) {
        throw new NotFound(`image ${ref}: one of its layers is not in the store (deleted, or the store is damaged)`, { image: ref, reason: 'layer-missing' });
      }
      await new Promise((r) => setTimeout(r, RESOLVE_RETRY_MS * attempt));
    }
  }

  /** hexes pinned by this process or by live processes' lease files (dead ones' files are removed). */
  private leasedHexes(): Promise<Set<string>> {
    return readLeases([this.leaseDir], new Set(this.leases.keys()), process.pid);
  }

  /**
   * hexes of base layers anyone may depend on: this process's pins, and the base store's lease files (every
   * process's leases of base layers, and a base build's: ./leases.ts).
   */
  private baseLeasedHexes(): Promise<Set<string>> {
    return readLeases([this.baseLeaseDir], new Set(this.leases.keys()));
  }

  /** hexes of the layers any tenant's image record names. */
  private async stateRefs(): Promise<Set<string>> {
    const refs = new Set<string>();
    for (const t of await fsp.readdir(join(this.state.root, 'images')).catch(() => [] as string[])) {
      const recs = await this.tenantImages(t).list().catch(() => [] as ImageRecord[]);
      for (const r of recs) for (const l of r.layers) refs.add(digestHex(l)!);
    }
    return refs;
  }

  private async baseRefs(): Promise<Set<string>> {
    const refs = new Set<string>();
    for (const r of await this.baseImages.list()) for (const l of r.layers) refs.add(digestHex(l)!);
    return refs;
  }

  /**
   * Removes the layers among `digests` that nothing wants (the module header's rule for removers). First, in one
   * synchronous pass, each layer this process has not leased is detached; then other processes' leases and
   * `refs()` (the records naming layers) are read, and a detached layer either of them names is put back, the
   * others deleted; so is one reused (LayerStore.reuse touches it) less than `graceMs` before it was detached:
   * that is how a deploy, which does not lease its code layer, keeps gc off the layer it found. Returns the digests
   * deleted. If the re-check itself fails, everything detached is put back.
   */
  private async removeUnwanted(
    store: LayerStore, section: Section, digests: string[], refs: () => Promise<Set<string>>, graceMs = 0,
    leased: () => Promise<Set<string>> = () => this.leasedHexes(),
  ): Promise<string[]> {
    const detached: Array<[string, DetachedLayer]> = [];
    for (const d of digests) {
      const hex = digestHex(d);
      if (!hex || this.leases.has(hex)) continue;
      const x = store.detach(hex, section);
      if (x) detached.push([hex, x]);
    }
    if (!detached.length) return [];
    let wanted: Set<string>;
    try {
      // leases before records: a user that lets go of its lease has written its record first
      wanted = await leased();
      for (const h of await refs()) wanted.add(h);
    } catch (e) {
      for (const [, x] of detached) await x.restore().catch(() => {});
      throw e;
    }
    const removed: string[] = [];
    const now = Date.now();
    let failed: unknown;
    for (const [hex, x] of detached) {
      // every detached layer gets its decision, whatever happened to the one before (a layer left under tmp/ is
      // lost to the start-up sweep)
      try {
        if (wanted.has(hex) || this.leases.has(hex) || now - x.mtimeMs < graceMs) {
          await x.restore();
        } else {
          await x.drop();
          removed.push(`sha256:${hex}`);
        }
      } catch (e) {
        failed ??= e;
      }
    }
    if (failed) throw failed;
    return removed;
  }

  async gc(keep: Set<string> | (() => Promise<Set<string>>)): Promise<{ removed: string[] }> {
    const readKeep = async () => {
      const k = typeof keep === 'function' ? await keep() : keep;
      return new Set([...k].map((d) => digestHex(d)).filter((h): h is string => !!h));
    };
    const keepHex = await readKeep();
    const leased = await this.leasedHexes();
    const now = Date.now();
    const spare = (hex: string, mtimeMs: number, pinned: Set<string>) => keepHex.has(hex) || pinned.has(hex) || now - mtimeMs < this.limits.gcGraceMs;
    // a first cut on what was true when gc started; removeUnwanted re-checks what may have changed since
    const candidates = async (store: LayerStore, section: Section, refs: Set<string>, pinned = leased) =>
      (await store.list(section)).filter((l) => {
        const hex = digestHex(l.digest)!;
        return !refs.has(hex) && !spare(hex, l.mtimeMs, pinned);
      }).map((l) => l.digest);

    const removed: string[] = [];
    const stateRefs = await this.stateRefs();
    const grace = this.limits.gcGraceMs;
    removed.push(...await this.removeUnwanted(this.state, 'layers', await candidates(this.state, 'layers', stateRefs), () => this.stateRefs(), grace));
    if (this.limits.gcBaseStore) {
      const baseRefs = await this.baseRefs();
      const baseLeased = () => this.baseLeasedHexes();
      const cands = await candidates(this.base, 'layers', baseRefs, await baseLeased());
      removed.push(...await this.removeUnwanted(this.base, 'layers', cands, () => this.baseRefs(), grace, baseLeased));
    }
    // code layers' references are function versions (in Redis): the caller's `keep`. Given as a function it is read
    // again after the layers are detached, so a version committed meanwhile keeps its layer; given as a set, a deploy
    // that committed since the caller read it is covered by the grace period (it reused or wrote its layer)
    const keepAgain = typeof keep === 'function' ? readKeep : async () => keepHex;
    removed.push(...await this.removeUnwanted(this.state, 'code', await candidates(this.state, 'code', new Set()), keepAgain, grace));
    return { removed };
  }
}

/** sha256 of a buffer as `sha256:<hex>` (the code digest of a bundle, as addBundle names it). */
export function bundleDigest(bundle: Buffer): string {
  return `sha256:${createHash('sha256').update(bundle).digest('hex')}`;
}
