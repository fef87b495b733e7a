/**
 * @module sandbox/validate
 * Policy and validation of sandbox specs, before anything is created or changed. Every refusal is an
 * `InvalidRequest` whose `details.field` names the offending field.
 */
import { lstatSync, readlinkSync, statSync } from 'node:fs';
import { isAbsolute, normalize, posix } from 'node:path';
import { InvalidRequest } from '../common/errors.ts';
import { SKELETON_LAYER, ensureRunDir } from './paths.ts';
import type { ProcessSpec, SandboxLimits, StartSpec } from './types.ts';

export const DEFAULT_LIMITS: SandboxLimits = { memoryMb: 128, pidsMax: 64, cpuMillis: 1000 };
/**
 * Minimums: 16 MiB leaves room for the init (≈1 MiB), a static process and a small /tmp; 4 tasks = the init,
 * the function's process and two children; 10 millicores = the kernel's 1 ms minimum CFS quota per 100 ms
 * period (kernel/sched/core.c min_cfs_quota_period is 1 ms).
 */
export const MIN_LIMITS: SandboxLimits = { memoryMb: 16, pidsMax: 4, cpuMillis: 10 };
/** upper bounds that catch unit mistakes (bytes given as MiB), not policy: 1 TiB, 4 Mi tasks, 1024 cores */
export const MAX_LIMITS: SandboxLimits = { memoryMb: 1 << 20, pidsMax: 1 << 22, cpuMillis: 1024 * 1000 };
export const DEFAULT_TMPFS_MB = 64;
export const DEFAULT_UID = 65534;
export const DEFAULT_HOSTNAME = 'fnhost';
/** glibc's default PATH for execvp(3); the init uses the same when env has no PATH */
export const DEFAULT_PATH = '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin';
/** the init refuses frames above 1 MiB (native/init/init.h MAX_FRAME); keep a margin for the ops */
const MAX_PROCESS_BYTES = 1000 * 1024;

function bad(field: string, message: string): never {
  throw new InvalidRequest(message, { field });
}

function isInt(v: unknown): v is number {
  return typeof v === 'number' && Number.isSafeInteger(v);
}

export function validateLimits(l: Partial<SandboxLimits> | undefined, field = 'limits'): Partial<SandboxLimits> {
  if (l === undefined) return {};
  if (typeof l !== 'object' || l === null) bad(field, `${field} must be an object`);
  const out: Partial<SandboxLimits> = {};
  for (const k of ['memoryMb', 'pidsMax', 'cpuMillis'] as const) {
    const v = l[k];
    if (v === undefined) continue;
    if (!isInt(v)) bad(`${field}.${k}`, `${field}.${k} must be an integer`);
    if (k === 'cpuMillis' && v === 0) { out[k] = 0; continue; }
    if (v < MIN_LIMITS[k]) bad(`${field}.${k}`, `${field}.${k} is ${v}, below the minimum ${MIN_LIMITS[k]}`);
    if (v > MAX_LIMITS[k]) bad(`${field}.${k}`, `${field}.${k} is ${v}, above the maximum ${MAX_LIMITS[k]}`);
    out[k] = v;
  }
  return out;
}

export function validateNodeId(nodeId: string): string {
  if (typeof nodeId !== 'string' || !/^[A-Za-z0-9_.-]{1,64}$/.test(nodeId) || nodeId === '.' || nodeId === '..') {
    bad('nodeId', 'nodeId must be 1-64 characters of [A-Za-z0-9_.-]');
  }
  return nodeId;
}

/** Absolute, normalised, and free of the characters overlayfs options use as separators. */
const knownLayerDirs = new Set<string>();

function layerDir(field: string, p: unknown): string {
  if (typeof p !== 'string' || !p) bad(field, `${field} must be a non-empty path`);
  if (!isAbsolute(p)) bad(field, `${field} must be an absolute path, got "${p}"`);
  if (/[:,\\\0\n]/.test(p)) bad(field, `${field} must not contain ':', ',', '\\', newlines or NUL`);
  if (knownLayerDirs.has(p)) return normalize(p);
  let st;
  try {
    st = statSync(p);
  } catch {
    bad(field, `${field} does not exist: ${p}`);
  }
  if (!st.isDirectory()) bad(field, `${field} is not a directory: ${p}`);
  if (knownLayerDirs.size >= CHECKED_MAX) knownLayerDirs.delete(knownLayerDirs.values().next().value!);
  knownLayerDirs.add(p);
  return normalize(p);
}

function layerList(field: string, layers: unknown): string[] {
  if (!Array.isArray(layers) || layers.length === 0) bad(field, `${field} must be a non-empty list of directories`);
  if (layers.length > 128) bad(field, `${field} has ${layers.length} layers; at most 128`);
  return layers.map((l, i) => layerDir(`${field}[${i}]`, l));
}

function sandboxPath(field: string, p: unknown): string {
  if (typeof p !== 'string' || !p.startsWith('/')) bad(field, `${field} must be an absolute path inside the sandbox`);
  if (/[\0\n]/.test(p)) bad(field, `${field} must not contain NUL or newlines`);
  const n = posix.normalize(p);
  if (n.split('/').includes('..')) bad(field, `${field} must not contain ".."`);
  return n.length > 1 && n.endsWith('/') ? n.slice(0, -1) : n;
}

export interface NormalProcess {
  argv: string[];
  env: string[];
  cwd: string;
  uid: number;
  gid: number;
  wire: boolean;
  stdin: Uint8Array | undefined;
}

export function validateProcess(p: ProcessSpec): NormalProcess {
  if (!p || typeof p !== 'object') bad('spec', 'spec must be an object');
  if (!Array.isArray(p.argv) || p.argv.length === 0) bad('argv', 'argv must be a non-empty list');
  p.argv.forEach((a, i) => {
    if (typeof a !== 'string' || a.includes('\0')) bad(`argv[${i}]`, `argv[${i}] must be a string without NUL`);
  });
  if (!p.argv[0]) bad('argv', 'argv[0] must not be empty');
  const env: string[] = [];
  for (const [k, v] of Object.entries(p.env ?? {})) {
    if (!k || k.includes('=') || k.includes('\0')) bad('env', `env name "${k}" must be non-empty without '=' or NUL`);
    if (typeof v !== 'string' || v.includes('\0')) bad('env', `env ${k} must be a string without NUL`);
    env.push(`${k}=${v}`);
  }
  const cwd = p.cwd === undefined ? '/' : sandboxPath('cwd', p.cwd);
  const uid = p.uid ?? DEFAULT_UID;
  const gid = p.gid ?? p.uid ?? DEFAULT_UID;
  for (const [f, v] of [['uid', uid], ['gid', gid]] as const) {
    if (!isInt(v) || v <= 0 || v > 0xfffffffe) bad(f, `${f} must be an unprivileged id (1..4294967294); 0 is refused`);
  }
  const bytes = p.argv.reduce((n, a) => n + a.length + 1, 0) + env.reduce((n, e) => n + e.length + 1, 0);
  if (bytes > MAX_PROCESS_BYTES) bad('argv', `argv and env take ${bytes} bytes; at most ${MAX_PROCESS_BYTES}`);
  if (p.stdin !== undefined && !(p.stdin instanceof Uint8Array)) bad('stdin', 'stdin must be a Buffer or Uint8Array');
  return { argv: [...p.argv], env, cwd, uid, gid, wire: p.wire === true, stdin: p.stdin };
}

/** A read-only overlay mounted at `target` inside the sandbox. */
export function validateMount(target: unknown, layers: unknown, tField: string, lField: string): { target: string; layers: string[] } {
  const t = sandboxPath(tField, target);
  if (t === '/' || ['/tmp', '/proc', '/dev'].some((x) => t === x || t.startsWith(`${x}/`))) {
    bad(tField, `${tField} ${t} overlaps a mount the sandbox makes itself`);
  }
  return { target: t, layers: layerList(lField, layers) };
}

export interface NormalStart extends NormalProcess {
  layers: string[];
  mounts: Array<{ target: string; layers: string[] }>;
  tmpfsMb: number;
  hostname: string;
  limits: Partial<SandboxLimits>;
}

export function validateStart(s: StartSpec): NormalStart {
  if (!s || typeof s !== 'object') bad('spec', 'spec must be an object');
  ensureRunDir();
  // the skeleton goes below the image: mount points the image may lack (paths.ts)
  const layers = [SKELETON_LAYER, ...layerList('layers', s.layers)];
  if (s.mounts !== undefined && !Array.isArray(s.mounts)) bad('mounts', 'mounts must be a list');
  const mounts = (s.mounts ?? []).map((m, i) => validateMount(m?.target, m?.layers, `mounts[${i}].target`, `mounts[${i}].layers`));
  const tmpfsMb = s.tmpfsMb ?? DEFAULT_TMPFS_MB;
  if (!isInt(tmpfsMb) || tmpfsMb < 1 || tmpfsMb > MAX_LIMITS.memoryMb) bad('tmpfsMb', 'tmpfsMb must be an integer >= 1');
  const hostname = s.hostname ?? DEFAULT_HOSTNAME;
  // RFC 1123 labels, at most 64 bytes (HOST_NAME_MAX)
  if (typeof hostname !== 'string' || !/^[A-Za-z0-9]([A-Za-z0-9.-]{0,62}[A-Za-z0-9])?$/.test(hostname)) {
    bad('hostname', 'hostname must be 1-64 characters of letters, digits, "." and "-"');
  }
  const limits = validateLimits(s.limits);
  const proc = validateProcess(s);
  checkRootfs({ layers, mounts }, proc);
  return { ...proc, layers, mounts, tmpfsMb, hostname, limits };
}

/**
 * Layers are immutable (content-addressed) once a spec names them, so a rootfs that passed these checks
 * passes them again: remembering the last few saves ~0.1 ms of lstat calls on every cold start (measured).
 * 256 entries: far more distinct (rootfs, command) pairs than one node keeps warm.
 */
const checkedRootfs = new Set<string>();
const CHECKED_MAX = 256;

function checkRootfs(rootfs: RootfsView, proc: NormalProcess): void {
  const key = JSON.stringify([rootfs.layers, rootfs.mounts, proc.argv[0], proc.cwd, proc.env.find((e) => e.startsWith('PATH='))]);
  if (checkedRootfs.has(key)) return;
  for (const dir of ['/proc', '/dev', '/tmp', ...rootfs.mounts.map((m) => m.target)]) {
    if (!existsInRootfs(rootfs, dir, true)) bad('layers', `the rootfs has no ${dir} directory to mount on (the layers are read-only)`);
  }
  if (!resolveCommand(rootfs, proc)) {
    bad('argv', `argv[0] "${proc.argv[0]}" is not in the rootfs${proc.argv[0].includes('/') ? '' : ' (searched PATH)'}`);
  }
  if (checkedRootfs.size >= CHECKED_MAX) checkedRootfs.delete(checkedRootfs.values().next().value!);
  checkedRootfs.add(key);
}

/**
 * exec() with mounts (types.ts ExecSpec): each target is a directory of the rootfs as it is now, and argv[0] is found
 * in the rootfs with the mounts attached. Remembered like checkRootfs (the same code layer attached into the same
 * image for every cold start of a function: the lstat walk, with an ENOENT per layer that lacks a component, is
 * then paid once). Returns the view with the mounts.
 */
export function checkExecMounts(view: RootfsView, mounts: Array<{ target: string; layers: string[] }>, proc: NormalProcess): RootfsView {
  const next = { layers: view.layers, mounts: [...view.mounts, ...mounts] };
  const key = JSON.stringify([view.layers, view.mounts, mounts, proc.argv[0], proc.cwd, proc.env.find((e) => e.startsWith('PATH='))]);
  if (checkedRootfs.has(key)) return next;
  for (const m of mounts) if (!existsInRootfs(view, m.target, true)) bad('mounts', `attach target ${m.target} is not a directory in the rootfs`);
  if (!resolveCommand(next, proc)) bad('argv', `argv[0] "${proc.argv[0]}" is not in the rootfs`);
  if (checkedRootfs.size >= CHECKED_MAX) checkedRootfs.delete(checkedRootfs.values().next().value!);
  checkedRootfs.add(key);
  return next;
}

export interface RootfsView {
  layers: string[];
  mounts: Array<{ target: string; layers: string[] }>;
}

/**
 * Does `path` (inside the sandbox) exist in the union of the layers? Resolves one component at a time,
 * topmost layer first, following symlinks (absolute ones inside the rootfs, as the kernel will after
 * entering the rootfs). Whiteouts are not interpreted: a file deleted by an upper layer still counts, so this only
 * ever errs towards letting the init report ENOENT itself.
 */
export function existsInRootfs(view: RootfsView, path: string, wantDir = false, depth = 0): boolean {
  if (depth > 40) return false; // ELOOP (fs/namei.c MAXSYMLINKS)
  const parts = path.split('/').filter(Boolean);
  let cur = '';
  for (let i = 0; i < parts.length; i++) {
    const next = `${cur}/${parts[i]}`;
    const layers = layersFor(view, next);
    let found: ReturnType<typeof lstatSync> | undefined;
    let host = '';
    for (let l = layers.length - 1; l >= 0; l--) {
      host = `${layers[l]}${next.slice(mountPrefix(view, next).length)}`;
      try {
        found = lstatSync(host);
        break;
      } catch {
        /* not in this layer */
      }
    }
    if (!found) return false;
    if (found.isSymbolicLink()) {
      const to = readlinkSync(host);
      const rest = parts.slice(i + 1).join('/');
      const target = to.startsWith('/') ? to : `${cur}/${to}`;
      return existsInRootfs(view, posix.normalize(`${target}/${rest}`), wantDir, depth + 1);
    }
    if (i < parts.length - 1 && !found.isDirectory()) return false;
    if (i === parts.length - 1 && wantDir && !found.isDirectory()) return false;
    cur = next;
  }
  return true;
}

function mountPrefix(view: RootfsView, p: string): string {
  let best = '';
  for (const m of view.mounts) if ((p === m.target || p.startsWith(`${m.target}/`)) && m.target.length > best.length) best = m.target;
  return best;
}

function layersFor(view: RootfsView, p: string): string[] {
  const pre = mountPrefix(view, p);
  return pre ? view.mounts.find((m) => m.target === pre)!.layers : view.layers;
}

/** argv[0] as execvp would find it: a path (relative to cwd) or a PATH search. */
export function resolveCommand(view: RootfsView, p: NormalProcess): string | undefined {
  const cmd = p.argv[0];
  if (cmd.includes('/')) {
    const abs = cmd.startsWith('/') ? cmd : posix.join(p.cwd, cmd);
    return existsInRootfs(view, abs) ? abs : undefined;
  }
  const pathVar = p.env.find((e) => e.startsWith('PATH='))?.slice(5) ?? DEFAULT_PATH;
  for (const dir of pathVar.split(':')) {
    const abs = posix.join(dir ? (dir.startsWith('/') ? dir : posix.join(p.cwd, dir)) : p.cwd, cmd);
    if (existsInRootfs(view, abs)) return abs;
  }
  return undefined;
}
