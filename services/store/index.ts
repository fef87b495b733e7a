/**
 * @module store
 * The image side of the store (issue 3): layers, images, OCI import, function code layers, base images.
 * Tenant/function metadata files live beside these (tenants.ts, functions.ts, keys.ts) and are separate.
 *
 * @example
 * import { openImageStore } from '../store/index.ts';
 * const images = await openImageStore();              // FNHOST_BASE_DIR / FNHOST_STATE_DIR or defaults
 * const { layers, config } = await images.resolve('node');
 */
export { openImageStore, FsImageStore, DEFAULT_STATE_DIR, bundleDigest, type ImageStoreOptions } from './image-store.ts';
export { buildBaseImages, BASE_IMAGE_NAMES, DEFAULT_BASE_DIR, NODE_VERSION, MOUNT_POINTS, type BuiltImage, type BuildOptions } from './base-images.ts';
export { detectBundleFormat, detectCompression } from './archive.ts';
export type { ImageStore, ResolvedImage, CodeLayer, ImageSummary, ImageConfig } from './types.ts';
