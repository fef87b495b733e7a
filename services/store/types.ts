/**
 * @module store/types
 * The contract of the layer and image store (implemented in services/store/, issue 3). The scheduler
 * and the gateway use only these types.
 *
 * A layer is an unpacked read-only directory named by the sha256 of its uncompressed tar
 * (`sha256:<hex>`); an image is an ordered list of layers (bottom first, OCI order) plus a config.
 * Base images (`busybox`, `node`, `python`) are built by infra/build-images.sh into the base store
 * (FNHOST_BASE_DIR, default /var/lib/fnhost/base) and are visible to every tenant; imported images are
 * private to their tenant and live in the state dir (FNHOST_STATE_DIR, default /var/lib/fnhost/state).
 */

export interface ImageConfig {
  entrypoint: string[];
  cmd: string[];
  env: Record<string, string>;
  workingDir: string;
  user?: string;
}

export interface ResolvedImage {
  /** the name it was resolved by ("node", or a tenant's image name). */
  ref: string;
  /** digest of the image (manifest or config), stable for the same layers + config. */
  digest: string;
  /** absolute host directories of the layers, bottom first. */
  layers: string[];
  /** the layers' digests (`sha256:<hex>`), same order as `layers` (for lease() and logs). */
  layerDigests?: string[];
  config: ImageConfig;
}

export interface CodeLayer {
  digest: string;
  /** absolute host directory holding the unpacked bundle (mounted read-only at /var/task). */
  dir: string;
  sizeBytes: number;
}

export interface ImageSummary {
  name: string;
  digest: string;
  layers: number;
  sizeBytes: number;
  base: boolean;
}

export interface ImageStore {
  /** a base image ("busybox" | "node" | "python") or one of `tenant`'s imported images; NotFound otherwise. */
  resolve(ref: string, tenant?: string): Promise<ResolvedImage>;
  /** unpack a function bundle (zip or tar.gz, detected from the bytes) into a code layer. InvalidRequest / PayloadTooLarge on bad input. */
  addBundle(bundle: Buffer): Promise<CodeLayer>;
  /** the directory of a code layer by digest; NotFound when it is not in the store. */
  codeLayer(digest: string): Promise<CodeLayer>;
  /**
   * Removes a code layer at once (a failed deploy's, which nothing references), unless a sandbox of this process
   * holds a lease on it. The layer leaves the store synchronously, before the promise's first turn: a caller that
   * checked nothing wants it can call this in the same turn without a window for a new user. A lease another
   * process took meanwhile (seen in its lease file just after) puts it back. Resolves true when it was removed,
   * false when it was absent or leased.
   */
  discardCode(digest: string): Promise<boolean>;
  /** import a `docker save` tar or an OCI layout (dir or tar) as `tenant`'s image `name`. */
  importImage(tenant: string, name: string, source: Buffer | string): Promise<ResolvedImage>;
  listImages(tenant: string): Promise<ImageSummary[]>;
  deleteImage(tenant: string, name: string): Promise<void>;
  /** mark layers as in use by a running sandbox; gc never removes them until the returned release() is called. */
  lease(digests: string[]): () => void;
  /**
   * resolve() and lease() in the order the store's removal rule needs (a user leases before it looks): the image
   * with its layers leased and present in the store, or NotFound — also when the image was deleted (and gc'd)
   * between its lookup and the lease, which resolve() then lease() would turn into a failing mount.
   * @example
   * const { image, release } = await images.resolveLeased('myimg', 'acme');   // mount image.layers; release() when done
   */
  resolveLeased?(ref: string, tenant?: string): Promise<{ image: ResolvedImage; release: () => void }>;
  /**
   * remove layers that no image, no digest in `keep` (function versions' code) and no lease references. `keep` may be
   * a function reading the versions' digests: gc then reads it again after taking its candidates out of the tree
   * and puts back any a version committed meanwhile names (a set is read once, before gc starts).
   */
  gc(keep: Set<string> | (() => Promise<Set<string>>)): Promise<{ removed: string[] }>;
}
