/**
 * @module sandbox/native
 * Loads the native addon and locates the static init. Built by `bash infra/build-native.sh` (native/Makefile)
 * into native/build/. This is the only module that touches the addon.
 */
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { NativeAddon } from '../../native/addon/index.d.ts';

const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
export const NATIVE_BUILD_DIR = join(ROOT, 'native', 'build');
/** the sandbox's init (PID 1), static; $FNHOST_INIT_PATH overrides it (profiling builds) */
export const INIT_PATH = process.env.FNHOST_INIT_PATH ?? join(NATIVE_BUILD_DIR, 'fnhost-init');
/** the in-sandbox test probe (test/fixtures/probe), static */
export const PROBE_PATH = join(NATIVE_BUILD_DIR, 'probe');

let cached: NativeAddon | undefined;

/** The addon, loaded on first use; throws a clear error when the native build has not run. */
export function native(): NativeAddon {
  if (cached) return cached;
  const file = join(NATIVE_BUILD_DIR, 'fnhost_native.node');
  if (!existsSync(file) || !existsSync(INIT_PATH)) {
    throw new Error(`fnhost's native launcher is not built (${NATIVE_BUILD_DIR}); run: bash infra/build-native.sh`);
  }
  cached = createRequire(import.meta.url)(file) as NativeAddon;
  return cached;
}
