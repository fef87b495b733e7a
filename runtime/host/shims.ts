/**
 * @module runtime/host/shims
 * How a runtime shim is started inside a sandbox. The shim's source travels in argv (`node -e`,
 * `python3 -c`) rather than as a file: the base images then need nothing of ours, and the rootfs stays
 * exactly the image's layers (the code layer is the only thing added, at /var/task).
 */
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

export type ShimRuntime = 'node' | 'python';

const here = (p: string) => fileURLToPath(new URL(p, import.meta.url));

let sources: Record<ShimRuntime, string> | null = null;
function source(rt: ShimRuntime): string {
  sources ??= {
    node: readFileSync(here('../node/shim.mjs'), 'utf8'),
    python: readFileSync(here('../python/shim.py'), 'utf8'),
  };
  return sources[rt];
}

/** Where the function's code layer is mounted (read-only) inside every sandbox (Lambda's path). */
export const CODE_DIR = '/var/task';

/** PATH when the image's config has none (Debian's default login PATH). */
export const DEFAULT_PATH = '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin';

/**
 * argv of a pre-booted shim.
 * node: V8's heap limit is fixed at start-up, before the function's cap is known (Node 24 sized it from
 * the machine's RAM, 4288 MB here, whatever the cgroup's cap; measured 2026-11-30). `--max-old-space-size`
 * puts it above any cap we allow, so the memory cgroup — and its clear OutOfMemory — is what ends a hungry
 * function, never V8's own "heap out of memory" abort. `--no-warnings` keeps experimental-feature notices
 * (require(esm) on some versions) out of the function's logs.
 * python: `-B` because the rootfs is read-only (no __pycache__ writes to even try).
 */
export function shimArgv(rt: ShimRuntime, nodeBinary = 'node', pythonBinary = 'python3'): string[] {
  if (rt === 'node') return [nodeBinary, '--max-old-space-size=16384', '--no-warnings', '--input-type=module', '-e', source('node')];
  return [pythonBinary, '-B', '-c', source('python')];
}
