/**
 * @module sandbox
 * The sandbox API (contract: ./types.ts): fresh namespaces + cgroup caps + a read-only overlay rootfs,
 * started through the native launcher (native/: addon + static init). The only entry point for runtimes and
 * the scheduler.
 *
 * @example
 * import { createSandbox } from '../sandbox/index.ts';
 * const sb = await createSandbox({ limits: { memoryMb: 64 } });       // pooled: init waiting, no rootfs
 * const p = await sb.start({ layers: ['/var/lib/fnhost/layers/busybox'], argv: ['/bin/echo', 'hi'] });
 * p.stdout.on('data', (d) => process.stdout.write(d));
 * const st = await p.exited;                                           // {code: 0, signal: null, oomKilled: false, ...}
 * await sb.destroy();                                                  // no process, mount or cgroup left
 */
import { randomBytes } from 'node:crypto';
import { closeSync, openSync, readFileSync } from 'node:fs';
import { Internal } from '../common/errors.ts';
import type { CgroupHandle, CgroupManager } from './cgroup.ts';
import { hostCgroups } from './cgroup-detect.ts';
import { closeJoin } from './cgroup-v2.ts';
import { ControlChannel } from './control.ts';
import { SandboxError, errnoName, fromNodeError } from './errors.ts';
import { INIT_PATH, PROBE_PATH, native } from './native.ts';
import { heldNodeFds, holdNode, releaseNode, sweepDeadNodes } from './node-lock.ts';
import { reap } from './reaper.ts';
import { NEWROOT, SandboxImpl, ensureRunDir } from './sandbox.ts';
import type { CreateOptions, Sandbox, SandboxLimits } from './types.ts';
import { DEFAULT_LIMITS, MIN_LIMITS, validateLimits, validateNodeId } from './validate.ts';
import { Zygote, sendJoin, type PendingInit } from './zygote.ts';

export type * from './types.ts';
export { SandboxError } from './errors.ts';
export { DEFAULT_LIMITS, MIN_LIMITS } from './validate.ts';
export { INIT_PATH, PROBE_PATH };

let nodeId = process.env.FNHOST_NODE_ID ?? 'default';
/** An init stages in ≈0.5 ms; 10 s means it is stuck (or the machine is), not slow. */
const READY_TIMEOUT_MS = 10_000;
const live = new Map<string, SandboxImpl>();
/** node ids this process made cgroups under, for destroyAll() */
const usedNodes = new Set<string>();
let privilegeChecked = false;
let managerOverride: CgroupManager | undefined;

/**
 * Sets the process-wide node id: cgroups go under fnhost/<nodeId>/ (default $FNHOST_NODE_ID or "default").
 *
 * @example
 * setNodeId('node-a'); // before the first createSandbox()
 */
export function setNodeId(id: string): void {
  nodeId = validateNodeId(id);
}

export function getNodeId(): string {
  return nodeId;
}

/** For tests only: run against another cgroup manager (e.g. a scratch v2 layout). */
export function setCgroupManagerForTests(m: CgroupManager | undefined): void {
  managerOverride = m;
}

function cgroups(): CgroupManager {
  return managerOverride ?? hostCgroups();
}

/** CAP_SYS_ADMIN is bit 21 of CapEff (include/uapi/linux/capability.h). */
const CAP_SYS_ADMIN = 21n;

/**
 * Why this process cannot make sandboxes, in one sentence, or null when it can.
 * The host calls this at start-up and exits with the sentence rather than half-start.
 *
 * @example
 * const why = sandboxUnavailableReason();
 * if (why) { console.error(why); process.exit(1); }
 */
export function sandboxUnavailableReason(): string | null {
  if (process.platform !== 'linux') return `fnhost needs Linux namespaces and cgroups, and this is ${process.platform}.`;
  if (process.getuid?.() !== 0) {
    return `fnhost must run as root to create namespaces, cgroups and mounts (running as uid ${process.getuid?.()}).`;
  }
  try {
    const m = /^CapEff:\s+([0-9a-f]+)$/m.exec(readFileSync('/proc/self/status', 'utf8'));
    if (!m || !((BigInt(`0x${m[1]}`) >> CAP_SYS_ADMIN) & 1n)) {
      return 'fnhost runs as root but without CAP_SYS_ADMIN, which it needs to create namespaces and mounts.';
    }
  } catch {
    /* no /proc: spawnInit will say what is missing */
  }
  return null;
}

/** Throws `Internal` with the one-sentence reason when this process cannot make sandboxes. */
export function assertCanSandbox(): void {
  if (privilegeChecked) return;
  const reason = sandboxUnavailableReason();
  if (reason) throw new Internal(reason, { reason: 'not-privileged' });
  native(); // fails with "run: bash infra/build-native.sh" when the native build is missing
  privilegeChecked = true;
}

// Namespaces of every sandbox. CLONE_NEWCGROUP is unshared by the addon's child after it joined the
// cgroups, so the namespace's root is the sandbox's own cgroup. The mount namespace is a copy of the
// template (below) when there is one, else of the host's (CLONE_NEWNS).
function cloneFlags(withTemplate: boolean): number {
  const c = native().constants;
  return c.CLONE_NEWPID | (withTemplate ? 0 : c.CLONE_NEWNS) | c.CLONE_NEWUTS | c.CLONE_NEWIPC | c.CLONE_NEWNET | c.CLONE_NEWCGROUP;
}

let template: Promise<number> | undefined;
let templateFd = -1;
let templateDisabled = false;

let zygote: Zygote | undefined;
let zygoteStarting: Promise<Zygote | undefined> | undefined;
/** $FNHOST_ZYGOTE=0 (or setZygoteForTests(false)) makes every init an exec in a copy of the template (A/B). */
let zygoteDisabled = process.env.FNHOST_ZYGOTE === '0';
/** Zygote start-ups or spawns that failed in a row; past MAX_ZYGOTE_FAILURES this process stops trying. */
let zygoteFailures = 0;
const MAX_ZYGOTE_FAILURES = 3;
/**
 * Network namespaces the zygote keeps ready ($FNHOST_NETNS_POOL, or setNetnsPoolForTests). Default: 4 where
 * the init must be born inside its cgroups (v2: the cgroup exists before the clone, so a CLONE_NEWNET's
 * ≈0.5 ms would be on the create path); none where it joins them after the clone (v1: the clone runs while
 * this thread makes the cgroups, ≈0.4-0.5 ms, which hides most of CLONE_NEWNET). Without a pool there is no
 * maker either: its refills (≈0.5 ms of non-preemptible kernel work each, this kernel is PREEMPT(none))
 * landed on the CPU the next sandbox's set-up wanted (quiet machine, `ph.mts` alternating, full cycle median
 * 2.49-2.59 ms without, 2.52-3.40 ms with). Each idle pooled namespace holds a few hundred KiB of kernel
 * memory (struct net, lo, per-netns tables).
 */
let netnsPoolOverride = process.env.FNHOST_NETNS_POOL === undefined ? undefined : poolSize(process.env.FNHOST_NETNS_POOL);
const DEFAULT_NETNS_POOL = 4;

function poolSize(v: string | undefined): number {
  const n = Number(v ?? DEFAULT_NETNS_POOL);
  // 64: the zygote's own cap (native/init/zygote.c); anything unparsable means the default
  return Number.isInteger(n) && n >= 0 ? Math.min(n, 64) : DEFAULT_NETNS_POOL;
}

function netnsPool(): number {
  return netnsPoolOverride ?? (cgroups().joinsAfterClone ? 0 : DEFAULT_NETNS_POOL);
}

/** fds this module keeps open for the whole process (template namespace, zygote socket, node locks), for fd-leak checks. */
export function moduleFds(): number[] {
  const fds = templateFd >= 0 ? [templateFd] : [];
  fds.push(...heldNodeFds());
  if (zygote && !zygote.isClosed) fds.push(zygote.fd);
  return fds;
}

/** For tests only: create sandboxes without the template namespace nor the zygote (the fallback path). */
export function setTemplateNamespaceForTests(enabled: boolean): void {
  templateDisabled = !enabled;
}

/** For tests and A/B benchmarks: spawn inits through the zygote (default) or by exec in a template copy. */
export function setZygoteForTests(enabled: boolean): void {
  zygoteDisabled = !enabled;
}

/** For tests and A/B benchmarks: the netns pool size of zygotes started from now on (0 = none; undefined = the default). */
export function setNetnsPoolForTests(size: number | undefined): void {
  const before = netnsPool();
  netnsPoolOverride = size === undefined ? undefined : poolSize(String(size));
  if (netnsPool() !== before) void stopZygote();
}

/** The zygote's pid while it runs (diagnostics, tests), else null. */
export function zygotePid(): number | null {
  return zygote && !zygote.isClosed ? zygote.pid : null;
}

/** The running zygote, started on first use; undefined when disabled or failing (callers fall back). */
async function getZygote(): Promise<Zygote | undefined> {
  if (zygoteDisabled || templateDisabled || zygoteFailures >= MAX_ZYGOTE_FAILURES) return undefined;
  if (zygote && !zygote.isClosed) return zygote;
  void zygote?.close(); // it died on its own: reap it
  zygoteStarting ??= (async () => {
    try {
      ensureRunDir();
      zygote = await Zygote.start(INIT_PATH, NEWROOT, netnsPool());
      return zygote;
    } catch {
      zygoteFailures++;
      zygote = undefined;
      return undefined;
    } finally {
      zygoteStarting = undefined;
    }
  })();
  return zygoteStarting;
}

/** A spawn through `z` failed: count it (this create falls back to an exec'd init); a dead zygote is dropped. */
function zygoteFailed(z: Zygote): void {
  zygoteFailures++;
  if (z.isClosed && zygote === z) zygote = undefined;
}

/**
 * Gives up an init spawned unjoined (its cgroups could not be made or sent): closing its socket makes it exit
 * at once (it is blocked reading its join frame); SIGKILL in case it got further, and it is reaped (it is
 * this process's child: CLONE_PARENT). Its pid cannot be reused before that reap.
 */
async function abandonInit(p: PendingInit): Promise<void> {
  try { closeSync(p.fd); } catch { /* closed already */ }
  let pid: number;
  try {
    pid = await p.pid;
  } catch {
    return; // no child was made
  }
  try { process.kill(pid, 'SIGKILL'); } catch { /* gone */ }
  await reap(pid);
}

/** Stops the zygote (host shutdown; the next createSandbox starts a new one); resolves once it is reaped. */
function stopZygote(): Promise<void> {
  const z = zygote;
  zygote = undefined;
  return z ? z.close() : Promise.resolve();
}

/**
 * The template mount namespace (native/init/mount.c mnt_template): built once per process by an init run
 * with --template, kept alive by this fd. Sandboxes are born in copies of it, so creating one copies 4
 * mounts instead of the host's ~30 and never holds host mounts. -1 (sandboxes then stage from a copy of the
 * host's tree) if it cannot be built.
 */
function templateNs(): Promise<number> {
  template ??= (async () => {
    const n = native();
    let sp;
    try {
      ensureRunDir();
      sp = n.spawnInit(INIT_PATH, ['--template', NEWROOT, INIT_PATH], n.constants.CLONE_NEWNS, [], -1);
    } catch {
      return -1;
    }
    const ch = new ControlChannel(sp.fd);
    try {
      await ch.ready;
      templateFd = openSync(`/proc/${sp.pid}/ns/mnt`, 'r');
      return templateFd;
    } catch {
      return -1;
    } finally {
      ch.close(); // the helper exits at EOF; the namespace lives on through the fd
      await reap(sp.pid);
    }
  })();
  return template;
}

/**
 * Does once what every sandbox shares (run dirs, the zygote — or, without it, the template mount namespace)
 * so the first createSandbox does not pay for it. Optional; call at host start-up.
 *
 * @example
 * await warmUp();
 */
export async function warmUp(): Promise<void> {
  assertCanSandbox();
  if (!(await getZygote())) await templateNs();
}

/**
 * Creates a pooled sandbox: fresh pid/mnt/uts/ipc/net/cgroup namespaces, its init born inside its own
 * cgroup with `limits` applied, blocked on its control channel. No rootfs yet (that is start()).
 *
 * @example
 * const sb = await createSandbox({ limits: { memoryMb: 128, pidsMax: 64 }, nodeId: 'node-a' });
 */
export async function createSandbox(opts: CreateOptions = {}): Promise<Sandbox> {
  assertCanSandbox();
  const limits: SandboxLimits = { ...DEFAULT_LIMITS, ...validateLimits(opts.limits) };
  const node = opts.nodeId === undefined ? nodeId : validateNodeId(opts.nodeId);
  ensureRunDir();
  // 1. the zygote: a clone of it becomes the init (no exec, pooled netns); 2. exec of the init in a copy of
  // the template mount namespace; 3. exec in a copy of the host's (it stages and detaches itself).
  const z = await getZygote();
  const m = cgroups();
  // v1: the zygote clones while this thread makes the cgroups (≈0.3-0.4 ms of mkdir, limit writes and opens
  // that used to come first); the new init joins them as soon as it gets their `tasks` fds (zygote.ts
  // sendJoin, sent between the mkdirs and the limit writes), then goes on with its set-up while they are
  // written. The clone (≈0.45 ms with its CLONE_NEWNET) is then the longest part of create: the request goes
  // out before anything else here (the sandbox id, the node lock) is done.
  let early: PendingInit | undefined;
  if (z && !z.isClosed && m.joinsAfterClone) {
    try {
      early = z.spawnUnjoined();
    } catch {
      zygoteFailed(z);
    }
  }
  if (!usedNodes.has(node)) {
    // before the first cgroup under it: no other host's sweep touches it from now on. Without a lock file
    // (e.g. /run read-only) nobody can prove this node dead either, so a failure here only costs the sweep.
    try { holdNode(node); } catch { /* see above */ }
    usedNodes.add(node);
  }
  const id = `sb-${randomBytes(6).toString('hex')}`;
  let joined = false;
  const sendEarlyJoin = (h: CgroupHandle) => {
    if (!early || !z) return;
    const join = h.openJoin();
    try {
      sendJoin(early.fd, join);
      joined = true;
    } catch {
      // the zygote or its clone is gone: this create falls back to an exec'd init
      void abandonInit(early);
      early = undefined;
      zygoteFailed(z);
    } finally {
      closeJoin(join); // in flight to the init: the kernel holds its own references
    }
  };
  let cg;
  try {
    cg = m.create(node, id, limits, early ? sendEarlyJoin : undefined);
  } catch (e) {
    if (early) {
      // it may sit in the cgroups already (joined before a limit write failed): end it, then remove them
      await abandonInit(early);
      if (joined) await m.open(node, id).remove().catch(() => {});
    }
    throw fromNodeError(`creating the cgroup of sandbox ${id}`, e);
  }
  let spawned: { pid: number; fd: number } | undefined;
  let ch: ControlChannel | undefined;
  try {
    // Reads the new init's messages from now on, while the zygote answers with its pid; a zygote that made no
    // child is counted as failed and the fallback below makes the init.
    const awaitInit = async (zy: Zygote, pending: PendingInit) => {
      const c = new ControlChannel(pending.fd);
      try {
        spawned = { pid: await pending.pid, fd: pending.fd };
        ch = c;
        zygoteFailures = 0;
      } catch {
        c.close();
        zygoteFailed(zy);
      }
    };
    if (early && z) {
      await awaitInit(z, early);
    } else if (z && !z.isClosed) {
      let pending: PendingInit | undefined;
      const join = cg.openJoin();
      try {
        pending = z.spawn(join);
      } catch {
        zygoteFailed(z);
      } finally {
        closeJoin(join); // in flight to the zygote: the kernel holds its own references
      }
      if (pending) await awaitInit(z, pending);
    }
    if (!spawned) {
      const tmpl = templateDisabled ? -1 : await templateNs();
      const join = cg.openJoin();
      try {
        spawned = tmpl >= 0
          ? native().spawnInit('/init', ['--in-template'], cloneFlags(true), join.procsFds, join.dirFd, tmpl)
          : native().spawnInit(INIT_PATH, [NEWROOT], cloneFlags(false), join.procsFds, join.dirFd);
      } finally {
        closeJoin(join);
      }
      ch = new ControlChannel(spawned.fd);
    }
  } catch (e) {
    await cg.remove().catch(() => {});
    throw fromNodeError(`starting the init of sandbox ${id}`, e);
  }
  let mntNs = -1;
  try {
    mntNs = openSync(`/proc/${spawned.pid}/ns/mnt`, 'r');
  } catch {
    /* only an optimisation (sandbox.ts reapInit) */
  }
  const sb = new SandboxImpl(id, spawned.pid, ch!, cg, limits, (s) => live.delete(s.id), mntNs);
  live.set(id, sb);
  let timer: NodeJS.Timeout | undefined;
  try {
    await Promise.race([
      sb.ready,
      new Promise((_, reject) => {
        // settles in the check phase: a timer that fires late (event loop blocked past it) must not beat a
        // "ready" the same loop turn's poll is about to read
        const fail = () => reject(Object.assign(new Error(`no "ready" within ${READY_TIMEOUT_MS} ms`), { errno: -110, syscall: 'read' }));
        timer = setTimeout(() => setImmediate(fail), READY_TIMEOUT_MS);
        timer.unref();
      }),
    ]);
  } catch (e) {
    await sb.destroy().catch(() => {});
    const n = e as { errno?: number; syscall?: string; path?: string; message?: string };
    throw new SandboxError(`sandbox ${id} init set-up failed: ${n.message}`, {
      code: n.errno === -110 ? 'ETIMEDOUT' : errnoName(n.errno ?? -5), errno: n.errno ?? -5, syscall: n.syscall ?? '', path: n.path || undefined,
    }, { cause: e });
  } finally {
    clearTimeout(timer);
  }
  return sb;
}

/**
 * Removes what an earlier run with this node id left behind: kills every task in fnhost/<nodeId>/* cgroups
 * (killing a sandbox's init ends its pid namespace and with it its mounts) and removes those cgroups.
 * Sandboxes live in this process are left alone. Then the leftovers of OTHER node ids whose hosts are
 * provably dead (node-lock.ts: no live process holds the node's lock) go too, where nothing runs in them
 * any more: `deadNodes` counts those nodes. Call once at host start-up.
 *
 * @example
 * const { sandboxes, deadNodes } = await cleanupLeftovers('node-a');
 */
export async function cleanupLeftovers(node: string = nodeId): Promise<{ sandboxes: number; deadNodes: number }> {
  validateNodeId(node);
  const m = cgroups();
  let n = 0;
  for (const id of m.list(node)) {
    if (live.has(id)) continue;
    const h = m.open(node, id);
    await h.killAll();
    await h.remove();
    n++;
  }
  m.removeNode(node);
  // Nothing of ours is left under the node (a live sandbox keeps its cgroup, skipped above): its lock
  // (node-lock.ts) goes too, as in destroyAll(); the next sandbox under the node takes it again.
  if (usedNodes.has(node) && m.list(node).length === 0) {
    releaseNode(node);
    usedNodes.delete(node);
  }
  const deadNodes = await sweepDeadNodes(m, (other) => other === node || usedNodes.has(other));
  return { sandboxes: n, deadNodes };
}

/** Sandboxes of this process not yet destroyed (for shutdown and diagnostics). */
export function liveSandboxes(): Sandbox[] {
  return [...live.values()];
}

/**
 * Destroys every live sandbox of this process, removes its node cgroup dirs and stops the zygote (host
 * shutdown): when it resolves, no process of ours is left, not even a zombie.
 */
export async function destroyAll(): Promise<void> {
  await Promise.all([...live.values()].map((s) => s.destroy().catch(() => {})));
  for (const node of usedNodes) {
    cgroups().removeNode(node);
    releaseNode(node);
  }
  usedNodes.clear();
  await stopZygote();
}
