/**
 * @module sandbox/paths
 * Host directories of the sandbox (under /run/fnhost) and the overlay layer order.
 */
import { mkdirSync } from 'node:fs';

/** Where the init stages its root inside its own mount namespace (the host never sees a mount here). */
export const RUN_DIR = '/run/fnhost';
export const NEWROOT = `${RUN_DIR}/stage`;
/**
 * The bottom layer of every rootfs: empty directories for the mount points the sandbox needs (/proc, /dev,
 * /tmp) and the conventional code mount point /var/task. The rootfs is read-only, so a mount point an image
 * lacks could not be made; layers above override anything here. It also keeps overlayfs's rule of at least
 * two lower layers without an upper one.
 */
export const SKELETON_LAYER = `${RUN_DIR}/skeleton`;
export const SKELETON_DIRS = ['proc', 'dev', 'tmp', 'var/task'];
/** An empty directory: the second layer of extra mounts with a single layer (overlayfs needs two). */
export const EMPTY_LAYER = `${RUN_DIR}/empty`;

let runDirReady = false;
export function ensureRunDir(): void {
  if (runDirReady) return;
  mkdirSync(NEWROOT, { recursive: true, mode: 0o755 });
  mkdirSync(EMPTY_LAYER, { recursive: true, mode: 0o755 });
  for (const d of SKELETON_DIRS) mkdirSync(`${SKELETON_LAYER}/${d}`, { recursive: true, mode: 0o755 });
  runDirReady = true;
}

/** overlayfs lower layers, top first (its order); a single layer gets the empty dir below it. */
export function lowerdir(layersBottomFirst: string[]): string[] {
  const top = [...layersBottomFirst].reverse();
  if (top.length === 1) top.push(EMPTY_LAYER);
  return top;
}

