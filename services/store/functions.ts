/**
 * @module store/functions
 * Functions and their immutable versions (DESIGN.md "function": name + immutable versions).
 *
 * Redis layout (prefix `p`):
 * - `p fn:<t>`          hash  name    → JSON of the latest {@link FunctionVersion} (one HGET resolves `name`)
 * - `p fnv:<t>:<name>`  hash  version → JSON of that version (resolves `name:3`)
 * - `p fnseq:<t>`       hash  name    → the last version number handed out
 *
 * A new version is written by one Lua script that checks the tenant exists, the function-count limit and,
 * when asked, that the latest version is still the one the caller based its change on; so concurrent deploys
 * never exceed `maxFunctions` and a PATCH never silently drops a deploy that landed in between.
 *
 * @example
 * const fns = new FunctionStore(redis);
 * const v = await fns.putVersion({ tenant: 'acme', name: 'hello', runtime: 'node', ... }, { maxFunctions: 100 });
 * await fns.get('acme', 'hello');      // latest
 * await fns.get('acme', 'hello', 1);   // version 1
 */
import type { Redis } from 'ioredis';
import type { FunctionVersion } from '../common/model.ts';
import { Conflict, LimitExceeded, NotFound } from '../common/errors.ts';
import type { Invalidation } from './metadata-cache.ts';
import { runScript } from './redis-script.ts';

export type NewVersion = Omit<FunctionVersion, 'version'>;

/** A function as listed: its latest version plus how many versions exist. */
export interface FunctionSummary {
  latest: FunctionVersion;
  versions: number;
}

// KEYS[1] = p tenants, KEYS[2] = p fn:<t>, KEYS[3] = p fnv:<t>:<name>, KEYS[4] = p fnseq:<t>
// ARGV[1] = tenant, ARGV[2] = name, ARGV[3] = maxFunctions,
// ARGV[4] = the record's JSON without its leading "{" (the script prepends {"version":N,),
// ARGV[5] = expected latest version ("" = do not check; "0" = the function must not exist yet).
// Returns the new version (>0), or -1 tenant missing, -2 function limit reached, -3 latest moved on.
const PUT_VERSION = `
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then return -1 end
local exists = redis.call('HEXISTS', KEYS[2], ARGV[2])
if exists == 0 and redis.call('HLEN', KEYS[2]) >= tonumber(ARGV[3]) then return -2 end
if ARGV[5] ~= '' then
  local cur = '0'
  if exists == 1 then cur = redis.call('HGET', KEYS[4], ARGV[2]) or '0' end
  if cur ~= ARGV[5] then return -3 end
end
local v = redis.call('HINCRBY', KEYS[4], ARGV[2], 1)
local rec = '{"version":' .. v .. ',' .. ARGV[4]
redis.call('HSET', KEYS[3], v, rec)
redis.call('HSET', KEYS[2], ARGV[2], rec)
return v`;

// KEYS[1] = p fn:<t>, KEYS[2] = p fnv:<t>:<name>, KEYS[3] = p fnseq:<t>; ARGV[1] = name.
// Returns 1 when the function existed.
const DELETE_FN = `
local n = redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('DEL', KEYS[2])
redis.call('HDEL', KEYS[3], ARGV[1])
return n`;

export class FunctionStore {
  constructor(
    private readonly redis: Redis,
    private readonly prefix = 'fnhost:meta:',
    /** told of every write; `latest`: the version a write just made the latest (what a read would return now). */
    private readonly onChange: (m: Invalidation, latest?: FunctionVersion) => void = () => {},
  ) {}

  private index(tenant: string) {
    return `${this.prefix}fn:${tenant}`;
  }
  private versionsKey(tenant: string, name: string) {
    return `${this.prefix}fnv:${tenant}:${name}`;
  }
  private seq(tenant: string) {
    return `${this.prefix}fnseq:${tenant}`;
  }

  /**
   * Writes a new immutable version and makes it the latest.
   * @param opts.maxFunctions the tenant's function limit (checked only when `name` is new).
   * @param opts.expectLatest the version the change was based on (0: must be new); omitted: not checked.
   * @throws NotFound (tenant gone), LimitExceeded (function limit), Conflict (latest moved on).
   */
  async putVersion(rec: NewVersion, opts: { maxFunctions: number; expectLatest?: number }): Promise<FunctionVersion> {
    const body = JSON.stringify({ ...rec, version: undefined }).slice(1);
    const r = (await runScript(
      this.redis,
      PUT_VERSION,
      [`${this.prefix}tenants`, this.index(rec.tenant), this.versionsKey(rec.tenant, rec.name), this.seq(rec.tenant)],
      [rec.tenant, rec.name, opts.maxFunctions, body, opts.expectLatest === undefined ? '' : String(opts.expectLatest)],
    )) as number;
    if (r === -1) throw new NotFound(`tenant ${rec.tenant} not found`);
    if (r === -2) throw new LimitExceeded(`tenant ${rec.tenant} already has its maximum of ${opts.maxFunctions} functions`, { field: 'name', limit: opts.maxFunctions });
    if (r === -3) throw new Conflict(`function ${rec.name} changed while this change was being made; retry`, { field: 'name' });
    // The record exactly as stored (and as get() would parse it): same key order, so the same fn reference.
    const latest = JSON.parse(`{"version":${r},${body}`) as FunctionVersion;
    this.onChange({ t: rec.tenant, f: rec.name }, latest);
    return latest;
  }

  /** The latest version, or version `version`; null when either does not exist. */
  async get(tenant: string, name: string, version?: number): Promise<FunctionVersion | null> {
    const raw =
      version === undefined
        ? await this.redis.hget(this.index(tenant), name)
        : await this.redis.hget(this.versionsKey(tenant, name), String(version));
    return raw ? (JSON.parse(raw) as FunctionVersion) : null;
  }

  /** Every version of a function, oldest first (empty when the function does not exist). */
  async versions(tenant: string, name: string): Promise<FunctionVersion[]> {
    const all = await this.redis.hvals(this.versionsKey(tenant, name));
    return all.map((r) => JSON.parse(r) as FunctionVersion).sort((a, b) => a.version - b.version);
  }

  /** The tenant's functions (latest versions), by name. */
  async list(tenant: string): Promise<FunctionSummary[]> {
    const latest = (await this.redis.hvals(this.index(tenant))).map((r) => JSON.parse(r) as FunctionVersion);
    latest.sort((a, b) => a.name.localeCompare(b.name));
    const pipe = this.redis.pipeline();
    for (const f of latest) pipe.hlen(this.versionsKey(tenant, f.name));
    const counts = latest.length ? ((await pipe.exec()) ?? []) : [];
    return latest.map((f, i) => ({ latest: f, versions: Number(counts[i]?.[1] ?? 0) }));
  }

  async count(tenant: string): Promise<number> {
    return this.redis.hlen(this.index(tenant));
  }

  /** Deletes a function with all its versions; NotFound when it does not exist. */
  async delete(tenant: string, name: string): Promise<void> {
    const n = await runScript(this.redis, DELETE_FN, [this.index(tenant), this.versionsKey(tenant, name), this.seq(tenant)], [name]);
    this.onChange({ t: tenant, f: name });
    if (n !== 1) throw new NotFound(`function ${name} not found`, { field: 'name' });
  }

  /** Deletes every function of a tenant (tenant deletion); returns the names removed. */
  async deleteAll(tenant: string): Promise<string[]> {
    const names = await this.redis.hkeys(this.index(tenant));
    const multi = this.redis.multi();
    for (const n of names) multi.del(this.versionsKey(tenant, n));
    multi.del(this.index(tenant), this.seq(tenant));
    await multi.exec();
    this.onChange({ t: tenant });
    return names;
  }

  /**
   * Every code digest referenced by any version of any tenant's function: the `keep` set of ImageStore.gc, and a
   * failed deploy's "does anything use my layer" check. Two pipelined round trips (every tenant's function names,
   * then every function's versions) whatever the number of functions; it still reads every version, which a
   * digest → versions index kept by the write scripts would avoid (not built: see the store notes).
   */
  async codeDigests(tenants: string[]): Promise<Set<string>> {
    const keep = new Set<string>();
    if (!tenants.length) return keep;
    const names = this.redis.pipeline();
    for (const t of tenants) names.hkeys(this.index(t));
    const fns: Array<[string, string]> = [];
    for (const [i, [err, r]] of ((await names.exec()) ?? []).entries()) {
      if (err) throw err;
      for (const name of r as string[]) fns.push([tenants[i]!, name]);
    }
    if (!fns.length) return keep;
    const versions = this.redis.pipeline();
    for (const [t, name] of fns) versions.hvals(this.versionsKey(t, name));
    for (const [err, r] of (await versions.exec()) ?? []) {
      if (err) throw err;
      for (const raw of r as string[]) {
        const d = (JSON.parse(raw) as FunctionVersion).codeDigest;
        if (d) keep.add(d);
      }
    }
    return keep;
  }
}
