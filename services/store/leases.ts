/**
 * @module store/leases
 * Lease files: how a process tells a remover in another process which layers it depends on. One file per lease,
 * `<dir>/<pid>-<tag>.json`, a JSON array of layer hexes, removed when the lease ends; a file whose pid is dead
 * counts for nothing (and is removed by the next reader of its directory).
 *
 * Where they live:
 * - `<state>/leases/`: FsImageStore.lease() (sandboxes, imports), read by that state dir's gc;
 * - `<base>/leases/`: the base store is shared by every state dir on the host, so a lease that pins base layers
 *   is written here as well (FsImageStore.lease: the base layers only; the runtime executor leases an image once
 *   per process, not per start), and so is the base-image build's (./base-images.ts). A gc of the base store
 *   (gcBaseStore) reads this directory, from whichever state dir it runs.
 *
 * @example
 * const release = writeLease('/var/lib/fnhost/base/leases', 'build-1', ['ab12…']);
 * const wanted = await readLeases(['/var/lib/fnhost/base/leases']);   // Set {'ab12…'}
 * release();
 */
import { mkdirSync, rmSync, writeFileSync, renameSync } from 'node:fs';
import * as fsp from 'node:fs/promises';
import { join } from 'node:path';

let seq = 0;

/**
 * Writes a lease file for `hexes` in `dir` (created if missing) and returns its release (idempotent). Written under
 * a temporary name and renamed, so a reader never sees a partial file. Best effort: a directory we cannot write
 * (a read-only base store) returns a release that does nothing.
 */
export function writeLease(dir: string, tag: string, hexes: string[]): () => void {
  const file = join(dir, `${process.pid}-${tag}-${++seq}.json`);
  try {
    mkdirSync(dir, { recursive: true });
    writeFileSync(`${file}.tmp`, JSON.stringify(hexes));
    renameSync(`${file}.tmp`, file);
  } catch {
    rmSync(`${file}.tmp`, { force: true });
    return () => {};
  }
  let released = false;
  return () => {
    if (released) return;
    released = true;
    rmSync(file, { force: true });
  };
}

/**
 * The hexes leased by live processes in `dirs` (added to `into`). Files of dead pids are removed; `skipPid`'s
 * files are not read (a process reads its own leases from memory). `.tmp` files are not leases yet.
 */
export async function readLeases(dirs: string[], into = new Set<string>(), skipPid?: number): Promise<Set<string>> {
  for (const dir of dirs) {
    for (const f of await fsp.readdir(dir).catch(() => [] as string[])) {
      const pid = Number(f.split('-')[0]);
      if (pid === skipPid) continue;
      if (!pidAlive(pid)) {
        // a dead writer's lease, or the temporary file of one that died while writing it
        await fsp.rm(join(dir, f), { force: true });
        continue;
      }
      if (!f.endsWith('.json')) continue;
      // gone since the readdir: its lease ended
      const raw = await fsp.readFile(join(dir, f), 'utf8').catch(() => '[]');
      for (const h of JSON.parse(raw) as string[]) into.add(h);
    }
  }
  return into;
}

export function pidAlive(pid: number): boolean {
  if (!Number.isInteger(pid) || pid <= 0) return false;
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}
