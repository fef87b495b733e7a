/**
 * @module gateway/validate
 * Pure validation of everything a caller sends: names, `name:3` references, function configs (PUT and
 * PATCH), tenant limits. Each failure is an InvalidRequest naming the field (or LimitExceeded for a tenant
 * limit); nothing here touches storage, so the routes validate fully before writing anything.
 *
 * @example
 * const cfg = validateFunctionConfig({ runtime: 'node', memoryMb: 256 }, { maxMemoryMb: 1024, maxConcurrency: 100 });
 * cfg.handler;   // 'index.handler' (the node default)
 */
import { InvalidRequest, LimitExceeded } from '../common/errors.ts';
import type { FunctionVersion, RuntimeName } from '../common/model.ts';
import type { TenantLimits } from '../store/tenants.ts';

/**
 * Names of tenants, functions and images: lowercase letters, digits and '-', starting and ending with a letter
 * or digit, at most 63 characters (a DNS label, RFC 1123), so a name is also safe as a path segment, a
 * Redis key part and a cgroup name: no '/', no '.', no uppercase.
 */
const NAME_RE = /^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$/;

export function validateName(name: unknown, field = 'name'): string {
  if (typeof name !== 'string' || name.length === 0) throw new InvalidRequest(`${field} is required`, { field });
  if (name.length > 63) throw new InvalidRequest(`${field} is longer than 63 characters`, { field });
  if (!NAME_RE.test(name)) {
    throw new InvalidRequest(`${field} ${JSON.stringify(name)} must be lowercase letters, digits and '-' (not at either end)`, { field });
  }
  return name;
}

/** `name` or `name:3` (a version number) as used in routes. */
export function parseFunctionRef(ref: string): { name: string; version?: number } {
  const i = ref.lastIndexOf(':');
  if (i < 0) return { name: validateName(ref) };
  const name = validateName(ref.slice(0, i));
  const v = ref.slice(i + 1);
  if (!/^[1-9][0-9]{0,8}$/.test(v)) throw new InvalidRequest(`version ${JSON.stringify(v)} must be a positive integer`, { field: 'version' });
  return { name, version: Number(v) };
}

/** The parts of a function version a caller configures. */
export interface FunctionConfig {
  runtime: RuntimeName;
  handler: string;
  memoryMb: number;
  timeoutMs: number;
  env: Record<string, string>;
  concurrency: number;
  public: boolean;
  retries?: number;
  maxInstances?: number;
}

export const DEFAULT_HANDLER: Record<'node' | 'python' | 'exec', string> = { node: 'index.handler', python: 'main.handler', exec: 'run' };

/** 128 MB default, as AWS Lambda's; 16 MB floor: below it even the exec runtime's busybox shell is at risk. */
export const DEFAULT_MEMORY_MB = 128;
export const MIN_MEMORY_MB = 16;
export const DEFAULT_TIMEOUT_MS = 30_000;
/** 15 minutes: AWS Lambda's ceiling (reference/peers.md [L1]); longer work belongs in a job system. */
export const MAX_TIMEOUT_MS = 15 * 60_000;
/** env: Lambda allows 4 KB in total [L1]; we allow 32 KiB, still far below Redis and job payload sizes. */
export const MAX_ENV_BYTES = 32 * 1024;
/** concurrent invocations per instance / instances per function: 1000 is far above what one node runs. */
export const MAX_CONCURRENCY = 1000;
/** async attempts: BullMQ retries with backoff; past 10 a failing invocation belongs in the dead letters. */
export const MAX_RETRIES = 10;

const FULL_FIELDS = new Set(['name', 'runtime', 'handler', 'memoryMb', 'timeoutMs', 'env', 'concurrency', 'public', 'retries', 'maxInstances']);
const PATCH_FIELDS = new Set(['memoryMb', 'timeoutMs', 'env', 'concurrency', 'public', 'retries', 'maxInstances']);

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function int(v: unknown, field: string, min: number, max: number): number {
  if (typeof v !== 'number' || !Number.isInteger(v)) throw new InvalidRequest(`${field} must be an integer`, { field });
  if (v < min || v > max) throw new InvalidRequest(`${field} must be between ${min} and ${max}`, { field, min, max });
  return v;
}

export function validateRuntime(v: unknown): RuntimeName {
  if (v === 'node' || v === 'python' || v === 'exec') return v;
  if (typeof v === 'string' && v.startsWith('image:')) {
    validateName(v.slice('image:'.length), 'runtime');
    return v as RuntimeName;
  }
  throw new InvalidRequest('runtime must be "node", "python", "exec" or "image:<name>"', { field: 'runtime' });
}

/**
 * A handler names a file in the code root (plus an export for node/python), so it must stay inside it:
 * relative, no '..' segment, no empty segment, printable ASCII of a safe set.
 */
export function validateHandler(v: unknown): string {
  if (typeof v !== 'string' || v.length === 0 || v.length > 255) throw new InvalidRequest('handler must be a string of 1 to 255 characters', { field: 'handler' });
  if (!/^[A-Za-z0-9_][A-Za-z0-9_./-]*$/.test(v) || v.split('/').some((s) => s === '' || s === '..' || s === '.')) {
    throw new InvalidRequest(`handler ${JSON.stringify(v)} must be a relative path inside the code (no '..', no leading '/')`, { field: 'handler' });
  }
  return v;
}

export function validateEnv(v: unknown): Record<string, string> {
  if (!isObject(v)) throw new InvalidRequest('env must be an object of strings', { field: 'env' });
  let bytes = 0;
  const out: Record<string, string> = {};
  for (const [k, val] of Object.entries(v)) {
    if (!/^[A-Za-z_][A-Za-z0-9_]{0,255}$/.test(k)) throw new InvalidRequest(`env name ${JSON.stringify(k)} is not a valid variable name`, { field: `env.${k}` });
    // FNHOST_* is where the runtimes put their own settings; a function must not be able to override them.
    if (k.startsWith('FNHOST_')) throw new InvalidRequest(`env name ${k}: the FNHOST_ prefix is reserved`, { field: `env.${k}` });
    if (typeof val !== 'string') throw new InvalidRequest(`env.${k} must be a string`, { field: `env.${k}` });
    if (val.includes('\0')) throw new InvalidRequest(`env.${k} must not contain NUL`, { field: `env.${k}` });
    bytes += Buffer.byteLength(k) + Buffer.byteLength(val) + 2;
    out[k] = val;
  }
  if (bytes > MAX_ENV_BYTES) throw new InvalidRequest(`env is larger than ${MAX_ENV_BYTES} bytes`, { field: 'env' });
  return out;
}

function memory(v: unknown, limits: Pick<TenantLimits, 'maxMemoryMb'>): number {
  if (typeof v !== 'number' || !Number.isInteger(v)) throw new InvalidRequest('memoryMb must be an integer', { field: 'memoryMb' });
  if (v < MIN_MEMORY_MB) throw new InvalidRequest(`memoryMb must be at least ${MIN_MEMORY_MB}`, { field: 'memoryMb', min: MIN_MEMORY_MB });
  if (v > limits.maxMemoryMb) {
    throw new LimitExceeded(`memoryMb ${v} is above this tenant's limit of ${limits.maxMemoryMb}`, { field: 'memoryMb', limit: limits.maxMemoryMb });
  }
  return v;
}

function concurrency(v: unknown, limits: Pick<TenantLimits, 'maxConcurrency'>): number {
  const n = int(v, 'concurrency', 1, MAX_CONCURRENCY);
  if (n > limits.maxConcurrency) {
    throw new LimitExceeded(`concurrency ${n} is above this tenant's limit of ${limits.maxConcurrency}`, { field: 'concurrency', limit: limits.maxConcurrency });
  }
  return n;
}

function checkFields(input: Record<string, unknown>, allowed: Set<string>, hint?: (k: string) => string | undefined) {
  for (const k of Object.keys(input)) {
    if (!allowed.has(k)) throw new InvalidRequest(hint?.(k) ?? `unknown field ${JSON.stringify(k)}`, { field: k });
  }
}

/** Applies the optional fields shared by PUT and PATCH onto `out`. */
function applyOptional(input: Record<string, unknown>, out: FunctionConfig, limits: Pick<TenantLimits, 'maxMemoryMb' | 'maxConcurrency'>) {
  if (input.memoryMb !== undefined) out.memoryMb = memory(input.memoryMb, limits);
  if (input.timeoutMs !== undefined) out.timeoutMs = int(input.timeoutMs, 'timeoutMs', 1, MAX_TIMEOUT_MS);
  if (input.env !== undefined) out.env = validateEnv(input.env);
  if (input.concurrency !== undefined) out.concurrency = concurrency(input.concurrency, limits);
  if (input.public !== undefined) {
    if (typeof input.public !== 'boolean') throw new InvalidRequest('public must be true or false', { field: 'public' });
    out.public = input.public;
  }
  if (input.retries !== undefined) out.retries = int(input.retries, 'retries', 0, MAX_RETRIES);
  if (input.maxInstances !== undefined) out.maxInstances = int(input.maxInstances, 'maxInstances', 1, MAX_CONCURRENCY);
}

/**
 * Validates a deploy's config (the whole config of the new version; omitted fields take their defaults).
 * @param pathName the function name from the URL; a `name` field, when present, must equal it.
 */
export function validateFunctionConfig(input: unknown, limits: Pick<TenantLimits, 'maxMemoryMb' | 'maxConcurrency'>, pathName?: string): FunctionConfig {
  if (!isObject(input)) throw new InvalidRequest('config must be a JSON object', { field: 'config' });
  checkFields(input, FULL_FIELDS);
  if (input.name !== undefined && input.name !== pathName) throw new InvalidRequest('config.name must match the name in the path', { field: 'name' });
  if (input.runtime === undefined) throw new InvalidRequest('runtime is required', { field: 'runtime' });
  const runtime = validateRuntime(input.runtime);
  let handler: string;
  if (input.handler !== undefined) handler = validateHandler(input.handler);
  else if (runtime === 'node' || runtime === 'python' || runtime === 'exec') handler = DEFAULT_HANDLER[runtime];
  else handler = ''; // image: the image's own entrypoint and cmd
  // A tenant capped below the default gets its cap as the default rather than a refusal it did not ask for.
  const memoryMb = Math.min(DEFAULT_MEMORY_MB, limits.maxMemoryMb);
  const out: FunctionConfig = { runtime, handler, memoryMb, timeoutMs: DEFAULT_TIMEOUT_MS, env: {}, concurrency: 1, public: false };
  applyOptional(input, out, limits);
  return out;
}

/** Validates a PATCH body and returns the config of the version it makes from `base`. */
export function validateFunctionPatch(input: unknown, base: FunctionVersion, limits: Pick<TenantLimits, 'maxMemoryMb' | 'maxConcurrency'>): FunctionConfig {
  if (!isObject(input)) throw new InvalidRequest('body must be a JSON object', { field: 'body' });
  checkFields(input, PATCH_FIELDS, (k) =>
    k === 'runtime' || k === 'handler' ? `${k} changes with the code: deploy a new version with PUT` : undefined,
  );
  if (Object.keys(input).length === 0) throw new InvalidRequest('nothing to change', { field: 'body' });
  const out: FunctionConfig = {
    runtime: base.runtime,
    handler: base.handler,
    memoryMb: base.memoryMb,
    timeoutMs: base.timeoutMs,
    env: base.env,
    concurrency: base.concurrency,
    public: base.public,
    ...(base.retries !== undefined ? { retries: base.retries } : {}),
    ...(base.maxInstances !== undefined ? { maxInstances: base.maxInstances } : {}),
  };
  applyOptional(input, out, limits);
  return out;
}

const LIMIT_FIELDS = new Set(['maxMemoryMb', 'maxConcurrency', 'maxFunctions']);

/** Tenant limits as given to POST /v1/tenants (each optional). */
export function validateTenantLimits(v: unknown): Partial<TenantLimits> {
  if (v === undefined) return {};
  if (!isObject(v)) throw new InvalidRequest('limits must be an object', { field: 'limits' });
  for (const k of Object.keys(v)) if (!LIMIT_FIELDS.has(k)) throw new InvalidRequest(`unknown field limits.${k}`, { field: `limits.${k}` });
  const out: Partial<TenantLimits> = {};
  // 1 TiB in MB: no single host we target has more; beyond it the number is a typo.
  if (v.maxMemoryMb !== undefined) out.maxMemoryMb = int(v.maxMemoryMb, 'limits.maxMemoryMb', MIN_MEMORY_MB, 1024 * 1024);
  if (v.maxConcurrency !== undefined) out.maxConcurrency = int(v.maxConcurrency, 'limits.maxConcurrency', 1, 100_000);
  if (v.maxFunctions !== undefined) out.maxFunctions = int(v.maxFunctions, 'limits.maxFunctions', 1, 100_000);
  return out;
}

/** Idempotency-Key header: 1..255 printable ASCII characters (the IETF draft's token is opaque; we bound it). */
export function validateIdempotencyKey(v: string | undefined): string | undefined {
  if (v === undefined) return undefined;
  if (v.length === 0 || v.length > 255 || !/^[\x21-\x7e]+$/.test(v)) {
    throw new InvalidRequest('Idempotency-Key must be 1 to 255 printable ASCII characters', { field: 'Idempotency-Key' });
  }
  return v;
}
