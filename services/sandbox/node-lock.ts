/**
 * @module sandbox/node-lock
 * Which node ids a live host uses, so that a host can remove what a killed one left under ANOTHER node id
 * (fnhost/<node>/ cgroups of a harness run under a node id nobody will use again) without ever touching a
 * live host's.
 *
 * Each process holds a shared flock on `/run/fnhost/nodes/<node>.lock` from its first sandbox under that node
 * until destroyAll(). The kernel drops the locks of a process however it dies (SIGKILL included), so a lock
 * file on which an exclusive non-blocking flock succeeds proves that no live process of ours uses the node. A
 * node without a lock file (made by an older build, or /run was emptied while it ran) is never touched: its
 * owner cannot be proven dead. /run is a tmpfs: the lock files go with a reboot, as the cgroups do.
 *
 * @example
 * holdNode('node-a');                                    // before the first cgroup under fnhost/node-a
 * const n = await sweepDeadNodes(cgroups, (node) => node === 'node-a');
 * releaseNode('node-a');                                 // destroyAll()
 */
import { closeSync, fstatSync, mkdirSync, openSync, readdirSync, statSync, unlinkSync } from 'node:fs';
import type { CgroupManager } from './cgroup.ts';
import { native } from './native.ts';
import { RUN_DIR } from './paths.ts';
import { validateNodeId } from './validate.ts';

export const NODES_DIR = `${RUN_DIR}/nodes`;
const LOCK_SUFFIX = '.lock';
/** A sweep holds a node's lock for a few rmdirs; a registration that keeps losing the race is a bug. */
const MAX_LOCK_TRIES = 20;

const held = new Map<string, number>();

function lockPath(node: string): string {
  return `${NODES_DIR}/${node}${LOCK_SUFFIX}`;
}

/**
 * Marks `node` as used by this process (idempotent): a shared lock on its lock file, held until
 * releaseNode(). Blocks only while another host sweeps this very node (a few rmdirs).
 */
export function holdNode(node: string): void {
  if (held.has(node)) return;
  mkdirSync(NODES_DIR, { recursive: true, mode: 0o700 });
  const path = lockPath(node);
  const c = native().constants;
  for (let i = 0; i < MAX_LOCK_TRIES; i++) {
    const fd = openSync(path, 'a', 0o600); // O_CREAT, close-on-exec (libuv)
    native().flock(fd, c.LOCK_SH);
    // A sweep may have unlinked the file between our open and our lock: then this lock guards nothing.
    let same = false;
    try {
      const a = fstatSync(fd);
      const b = statSync(path);
      same = a.ino === b.ino && a.dev === b.dev;
    } catch {
      /* unlinked meanwhile */
    }
    if (same) {
      held.set(node, fd);
      return;
    }
    closeSync(fd);
  }
  throw new Error(`could not lock ${path}: it keeps being removed`);
}

/** Drops this process's hold on `node`; the lock file goes too when nobody else holds it. */
export function releaseNode(node: string): void {
  const fd = held.get(node);
  if (fd === undefined) return;
  held.delete(node);
  const c = native().constants;
  try {
    // not atomic (flock(2) drops the shared lock first), which is fine: the fd is closed right after
    if (native().flock(fd, c.LOCK_EX | c.LOCK_NB)) unlinkSync(lockPath(node));
  } catch {
    /* gone already */
  } finally {
    closeSync(fd);
  }
}

/** fds of the locks this process holds (for fd-leak checks). */
export function heldNodeFds(): number[] {
  return [...held.values()];
}

/**
 * Removes the leftovers of every node no live host holds (see the module comment): its sandbox cgroups that
 * have no task (a dead host's inits died with it: PDEATHSIG), its node dirs, its lock file. Nodes for which
 * `skip` is true, nodes held by this process and nodes without a lock file are left alone. Returns how many
 * nodes were removed entirely.
 */
export async function sweepDeadNodes(m: CgroupManager, skip: (node: string) => boolean): Promise<number> {
  let locks: string[] = [];
  try {
    locks = readdirSync(NODES_DIR).filter((f) => f.endsWith(LOCK_SUFFIX)).map((f) => f.slice(0, -LOCK_SUFFIX.length));
  } catch {
    return 0; // no lock file at all: nothing is provably dead
  }
  const c = native().constants;
  let removed = 0;
  for (const node of locks) {
    if (skip(node) || held.has(node)) continue;
    try {
      validateNodeId(node);
    } catch {
      continue; // not a name of ours
    }
    let fd: number;
    try {
      fd = openSync(lockPath(node), 'r');
    } catch {
      continue; // removed by another sweep meanwhile
    }
    try {
      if (!native().flock(fd, c.LOCK_EX | c.LOCK_NB)) continue; // a live host holds it
      let left = 0;
      for (const id of m.list(node)) {
        const h = m.open(node, id);
        if (h.pids().length) {
          left++; // something still runs in it: not ours to kill without its owner
          continue;
        }
        try {
          await h.remove(50);
        } catch {
          left++;
        }
      }
      m.removeNode(node);
      if (left === 0 && m.list(node).length === 0) {
        unlinkSync(lockPath(node));
        removed++;
      }
    } catch {
      /* best effort: the next start-up tries again */
    } finally {
      closeSync(fd);
    }
  }
  return removed;
}
