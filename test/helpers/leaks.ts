/**
 * Leak assertions for sandbox tests: after a test, no process, cgroup or mount of ours may be left, and
 * this process holds no more fds than before. "Ours" = the test file's own nodeId prefix
 * (fnhost/<nodeId>/ in every cgroup hierarchy), the sandbox's staging dir /run/fnhost, and given fixture
 * paths — so helpers running their tests in parallel on this machine never see each other's work.
 */
import { readdirSync, readFileSync, readlinkSync } from 'node:fs';
import { join } from 'node:path';
import { moduleFds } from '../../services/sandbox/index.ts';

const CGROUP_ROOT = '/sys/fs/cgroup';

export interface Leftovers {
  /** sandbox cgroup dirs below fnhost/<nodeId>/ in any hierarchy */
  cgroups: string[];
  /** host pids whose /proc/<pid>/cgroup names fnhost/<nodeId>/ */
  processes: number[];
  /** lines of /proc/self/mountinfo naming /run/fnhost or one of `paths` */
  mounts: string[];
}

function cgroupHierarchies(): string[] {
  const out: string[] = [];
  for (const line of readFileSync('/proc/self/mountinfo', 'utf8').split('\n')) {
    const sep = line.indexOf(' - ');
    if (sep < 0) continue;
    const fstype = line.slice(sep + 3).split(' ')[0];
    if (fstype === 'cgroup' || fstype === 'cgroup2') out.push(line.slice(0, sep).split(' ')[4]!);
  }
  return out.filter((m) => m.startsWith(CGROUP_ROOT));
}

export function findLeftovers(nodeId: string, paths: string[] = []): Leftovers {
  const cgroups: string[] = [];
  for (const h of cgroupHierarchies()) {
    const dir = join(h, 'fnhost', nodeId);
    try {
      for (const e of readdirSync(dir, { withFileTypes: true })) if (e.isDirectory()) cgroups.push(join(dir, e.name));
    } catch {
      /* no node dir in this hierarchy */
    }
  }
  const processes: number[] = [];
  const needle = `/fnhost/${nodeId}/`;
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    try {
      if (readFileSync(`/proc/${name}/cgroup`, 'utf8').includes(needle)) processes.push(Number(name));
    } catch {
      /* exited while we looked */
    }
  }
  const needles = ['/run/fnhost', ...paths];
  const mounts = readFileSync('/proc/self/mountinfo', 'utf8').split('\n').filter((l) => needles.some((n) => l.includes(n)));
  return { cgroups, processes, mounts };
}

export function openFds(): string[] {
  return readdirSync('/proc/self/fd').map((fd) => {
    try {
      return `${fd}:${readlinkSync(`/proc/self/fd/${fd}`)}`;
    } catch {
      return `${fd}:?`;
    }
  });
}

/**
 * Polls until nothing of ours is left (destroy() is synchronous about processes and cgroups, but a
 * stream's fd is closed by libuv on a later tick), then throws with the list if something still is.
 */
export async function assertNoLeaks(nodeId: string, opts: { paths?: string[]; fdsBefore?: string[]; deadlineMs?: number } = {}): Promise<void> {
  const deadline = Date.now() + (opts.deadlineMs ?? 3000);
  for (;;) {
    const l = findLeftovers(nodeId, opts.paths);
    const fdsNow = openFds();
    const keep = moduleFds().map((fd) => `${fd}:`);
    const extraFds = opts.fdsBefore
      ? fdsNow.filter((f) => !opts.fdsBefore!.includes(f) && /(pipe|socket|anon_inode|mnt)/.test(f) && !keep.some((k) => f.startsWith(k)))
      : [];
    if (!l.cgroups.length && !l.processes.length && !l.mounts.length && !extraFds.length) return;
    if (Date.now() > deadline) {
      throw new Error(`leaked: ${JSON.stringify({ ...l, extraFds })}`);
    }
    await new Promise((r) => setTimeout(r, 20));
  }
}
