/**
 * @module store/functions
 * Functions and their immutable versions (DESIGN.md "function": name + immutable versions).
 *
 * Redis layout (prefix `p`):
 * - `p fn:<t>`          hash  name    → JSON of the latest {@link FunctionVersion} (one HGET resolves `name`)
 * - `p fnv:<t>:<name>`  hash  version → JSON of that version (resolves `name:3`); a deleted version's field
 *   is removed ({@link FunctionStore.deleteVersion}), so the numbers present may have gaps
 * - `p fnseq:<t>`       hash  name    → the last version number handed out; kept when the function is deleted
 *   (removed with the tenant), so a re-created function continues the numbering: `name:N` never names another
 *   record, and neither does a PATCH's `expectLatest` (a PATCH based on the deleted function's latest version
 *   would otherwise commit that version's runtime and code onto the re-created function)
 * - `p imggen:<t>`      string  the tenant's image-delete generation: +1 at the start of every image delete
 * - `p imgdel:<t>:<img>` string  a delete of image `img` in progress (a token; expires, see IMAGE_DELETE_TTL_MS)
 *
 * A new version is written by one Lua script that checks the tenant exists, the function-count limit and,
 * when asked, that the latest version is still the one the caller based its change on; so concurrent deploys
 * never exceed `maxFunctions` and a PATCH never silently drops a deploy that landed in between.
 *
 * Images vs versions (`runtime: "image:<img>"`): an image may be deleted only while no version of any function
 * runs on it (every version stays invocable as `name:N` until it or its function is deleted: an older version on a
 * deleted image would fail NotFound at its next cold start), and a version may not be committed naming an image
 * deleted since the deploy found it. Deleting a version (one script) runs wholly before or after the delete's users
 * check, so the check never counts a version that is gone, nor misses one that stays.
 * Both sides go through Redis, so this holds across gateways:
 * - the delete ({@link FunctionStore.beginImageDelete}) checks the users and, in the same script, bumps the
 *   generation and sets its `imgdel` mark; it removes the record, then clears the mark;
 * - the deploy reads the generation ({@link FunctionStore.imageGeneration}, refused while the mark is set)
 *   BEFORE it looks the image up, and its version script commits only if the generation has not moved.
 * A delete that started before the deploy's read is seen by that read (the mark) or finished first (the
 * lookup then finds no image); one that started after it moves the generation (the commit is refused and the
 * deploy looks again); one whose script ran after the commit sees the new version as a user and refuses.
 * PATCH keeps the runtime and commits only while its base is still the latest (the same record: version numbers
 * are not reused), so the users check covers it.
 *
 * @example
 * const fns = new FunctionStore(redis);
 * const v = await fns.putVersion({ tenant: 'acme', name: 'hello', runtime: 'node', ... }, { maxFunctions: 100 });
 * await fns.get('acme', 'hello');      // latest
 * await fns.get('acme', 'hello', 1);   // version 1
 */
import { randomBytes } from 'node:crypto';
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

// KEYS[1] = p tenants, KEYS[2] = p fn:<t>, KEYS[3] = p fnv:<t>:<name>, KEYS[4] = p fnseq:<t>, KEYS[5] = p imggen:<t>
// ARGV[1] = tenant, ARGV[2] = name, ARGV[3] = maxFunctions,
// ARGV[4] = the record's JSON without its leading "{" (the script prepends {"version":N,),
// ARGV[5] = expected latest version ("" = do not check; "0" = the function must not exist yet),
// ARGV[6] = expected image-delete generation ("" = do not check).
// Returns the new version (>0), or -1 tenant missing, -2 function limit reached, -3 latest moved on,
// -4 an image delete started since the generation was read.
const PUT_VERSION = `
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then return -1 end
if ARGV[6] ~= '' and (redis.call('GET', KEYS[5]) or '0') ~= ARGV[6] then return -4 end
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

// KEYS[1] = p fn:<t>, KEYS[2] = p fnv:<t>:<name>; ARGV[1] = name. (`p fnseq:<t>` stays: see the layout.)
// Returns 1 when the function existed.
const DELETE_FN = `
local n = redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('DEL', KEYS[2])
return n`;

// KEYS[1] = p fn:<t>, KEYS[2] = p fnv:<t>:<name>; ARGV[1] = name, ARGV[2] = version.
// Returns 1 when version ARGV[2] was deleted, -1 no such function, -2 it is the latest (nothing changed),
// -3 no such version. The latest's number is the leading `{"version":N,` of the index's record (PUT_VERSION
// writes it first; a record written otherwise is decoded). One script, so a deploy or PATCH that makes ARGV[2] older, another delete of it, a delete of
// the function or an image delete's users check (one script too) each run wholly before or after it.
const DELETE_VERSION = `
local latest = redis.call('HGET', KEYS[1], ARGV[1])
if not latest then return -1 end
local lv = string.match(latest, '^{"version":(%d+),') or tostring(cjson.decode(latest).version)
if lv == ARGV[2] then return -2 end
if redis.call('HDEL', KEYS[2], ARGV[2]) == 0 then return -3 end
return 1`;

// KEYS[1] = p fn:<t>, KEYS[2] = p imggen:<t>, KEYS[3] = p imgdel:<t>:<img>, KEYS[4] = p tenants,
// KEYS[5..4+n] = p fnv:<t>:<name> of each function name read just before (ARGV[5..4+n], same order)
// ARGV[1] = "image:<img>" (the runtime that uses it), ARGV[2] = token, ARGV[3] = mark ttl (ms), ARGV[4] = tenant.
// Returns the versions that run on the image as "name:version" (nothing changed), or an empty list: generation
// bumped and mark set; -1: no such tenant (nothing written: a deleted tenant's keys are gone for good); -2: the
// tenant's function names are not the ones passed (a function was created or deleted since they were read: read
// them again). Every retained version counts, not only the latest: `name:1` is invocable as long as it exists.
// Reads every version of the tenant (a text search first, cjson only on records that mention the runtime):
// deletes are rare, and a users index kept by the version scripts would cost every deploy.
const BEGIN_IMAGE_DELETE = `
if redis.call('HEXISTS', KEYS[4], ARGV[4]) == 0 then return -1 end
local n = #KEYS - 4
if redis.call('HLEN', KEYS[1]) ~= n then return -2 end
for i = 1, n do
  if redis.call('HEXISTS', KEYS[1], ARGV[4 + i]) == 0 then return -2 end
end
local users = {}
for i = 1, n do
  local all = redis.call('HGETALL', KEYS[4 + i])
  for j = 1, #all, 2 do
    if string.find(all[j + 1], ARGV[1], 1, true) then
      local ok, rec = pcall(cjson.decode, all[j + 1])
      if ok and type(rec) == 'table' and rec.runtime == ARGV[1] then users[#users + 1] = ARGV[4 + i] .. ':' .. all[j] end
    end
  end
end
if #users > 0 then return users end
redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[3], ARGV[2], 'PX', ARGV[3])
return {}`;

// KEYS[1] = p imgdel:<t>:<img>, ARGV[1] = token: clears the mark only if it is still this delete's.
const END_IMAGE_DELETE = `
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 0`;

/**
 * How long an image delete's mark lives when its gateway dies before clearing it (deploys of that image are
 * refused meanwhile). A delete holds it for one record unlink, milliseconds; if one ever took longer, a deploy
 * starting after the expiry could commit while the record is still there and be left naming a deleted image.
 */
export const IMAGE_DELETE_TTL_MS = 60_000;

/** Reads of the tenant's function names by beginImageDelete when functions are created or deleted under it (each is one round trip). */
const IMAGE_DELETE_ATTEMPTS = 5;

/** `details.reason` of the Conflict putVersion throws when an image delete started after `imageGen` was read. */
export const IMAGES_CHANGED = 'images-changed';

/**
 * Whether version `version` of function `name` is still in the metadata store under `prefix`, for a reader that
 * holds a copy of its record (a queued async job): `false` only when the tenant is there and the version is not
 * (it, or its function, was deleted: numbers are never reused, so a re-created function does not bring it back);
 * `null` when the tenant is unknown under `prefix` (another store, or the tenant is being deleted): cannot tell.
 * One round trip.
 * @example
 * if ((await versionState(redis, 'fnhost:meta:', 'acme', 'hello', 1)) === false) throw new NotFound('hello:1 was deleted');
 */
export async function versionState(redis: Redis, prefix: string, tenant: string, name: string, version: number): Promise<boolean | null> {
  const r = await redis.pipeline().hexists(`${prefix}tenants`, tenant).hexists(`${prefix}fnv:${tenant}:${name}`, String(version)).exec();
  const [[e1, tenantThere], [e2, versionThere]] = r as [[Error | null, number], [Error | null, number]];
  if (e1 || e2) throw e1 ?? e2;
  if (tenantThere !== 1) return null;
  return versionThere === 1;
}

/** `details.reason` of the Conflict deleteVersion throws for the function's latest version. */
export const VERSION_IS_LATEST = 'latest';

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
  private imageGenKey(tenant: string) {
    return `${this.prefix}imggen:${tenant}`;
  }
  private imageDeleteKey(tenant: string, image: string) {
    return `${this.prefix}imgdel:${tenant}:${image}`;
  }

  /**
   * Writes a new immutable version and makes it the latest.
   * @param opts.maxFunctions the tenant's function limit (checked only when `name` is new).
   * @param opts.expectLatest the version the change was based on (0: must be new); omitted: not checked.
   * @param opts.imageGen the tenant's {@link imageGeneration} read before the version's image was looked up;
   *   omitted: not checked (a runtime that is not a tenant's image).
   * @throws NotFound (tenant gone), LimitExceeded (function limit), Conflict (latest moved on; or, with
   *   `details.reason` {@link IMAGES_CHANGED}, an image delete started since `imageGen`: look the image up again).
   */
  async putVersion(rec: NewVersion, opts: { maxFunctions: number; expectLatest?: number; imageGen?: number }): Promise<FunctionVersion> {
    const body = JSON.stringify({ ...rec, version: undefined }).slice(1);
    const r = (await runScript(
      this.redis,
      PUT_VERSION,
      [`${this.prefix}tenants`, this.index(rec.tenant), this.versionsKey(rec.tenant, rec.name), this.seq(rec.tenant), this.imageGenKey(rec.tenant)],
      [
        rec.tenant, rec.name, opts.maxFunctions, body,
        opts.expectLatest === undefined ? '' : String(opts.expectLatest),
        opts.imageGen === undefined ? '' : String(opts.imageGen),
      ],
    )) as number;
    if (r === -1) throw new NotFound(`tenant ${rec.tenant} not found`);
    if (r === -2) throw new LimitExceeded(`tenant ${rec.tenant} already has its maximum of ${opts.maxFunctions} functions`, { field: 'name', limit: opts.maxFunctions });
    if (r === -3) throw new Conflict(`function ${rec.name} changed while this change was being made; retry`, { field: 'name' });
    if (r === -4) throw new Conflict(`an image of tenant ${rec.tenant} was deleted while ${rec.runtime} was being deployed; retry`, { field: 'runtime', reason: IMAGES_CHANGED });
    // The record exactly as stored (and as get() would parse it): same key order, so the same fn reference.
    const latest = JSON.parse(`{"version":${r},${body}`) as FunctionVersion;
    this.onChange({ t: rec.tenant, f: rec.name }, latest);
    return latest;
  }

  /**
   * The tenant's image-delete generation, to pass as `putVersion`'s `imageGen`; read it BEFORE looking up the
   * image the version will name (see the module header). One round trip.
   * @throws Conflict while a delete of `image` is in progress.
   * @example
   * const gen = await fns.imageGeneration('acme', 'myimg');
   * await images.resolve('myimg', 'acme');                       // NotFound: no such image
   * await fns.putVersion({ ...rec, runtime: 'image:myimg' }, { maxFunctions: 100, imageGen: gen });
   */
  async imageGeneration(tenant: string, image: string): Promise<number> {
    const [gen, deleting] = await this.redis.mget(this.imageGenKey(tenant), this.imageDeleteKey(tenant, image));
    if (deleting !== null) throw new Conflict(`image ${image} is being deleted`, { field: 'runtime', image });
    return Number(gen ?? 0);
  }

  /**
   * Starts deleting a tenant's image: refuses while any version of a function runs on it, otherwise marks
   * the delete (new versions naming any image of the tenant whose lookup came before this are refused by
   * putVersion; deploys of `image` are refused until `end`). Call `end` once the record is gone (or the delete
   * failed); it never throws (the mark then expires after {@link IMAGE_DELETE_TTL_MS}).
   * @throws Conflict `{functions, versions: ['name:N', ...]}` when versions use the image, NotFound when the tenant
   *   is gone (nothing changed).
   * @example
   * const end = await fns.beginImageDelete('acme', 'myimg');
   * try { await images.deleteImage('acme', 'myimg'); } finally { await end(); }
   */
  async beginImageDelete(tenant: string, image: string, ttlMs = IMAGE_DELETE_TTL_MS): Promise<() => Promise<void>> {
    const token = randomBytes(8).toString('hex');
    const mark = this.imageDeleteKey(tenant, image);
    let users: string[] | -1 | -2 = -2;
    // the names are read first so the script declares every key it reads; one created or deleted in between
    // makes the script refuse (-2) and the names are read again
    for (let attempt = 1; users === -2; attempt++) {
      if (attempt > IMAGE_DELETE_ATTEMPTS) throw new Conflict(`the functions of tenant ${tenant} kept changing while image ${image} was being deleted; retry`, { field: 'name', image });
      const names = await this.redis.hkeys(this.index(tenant));
      users = (await runScript(
        this.redis,
        BEGIN_IMAGE_DELETE,
        [this.index(tenant), this.imageGenKey(tenant), mark, `${this.prefix}tenants`, ...names.map((n) => this.versionsKey(tenant, n))],
        [`image:${image}`, token, ttlMs, tenant, ...names],
      )) as string[] | -1 | -2;
    }
    if (users === -1) throw new NotFound(`tenant ${tenant} not found`);
    if (users.length) {
      const versions = users.map((u) => {
        const i = u.lastIndexOf(':');
        return { name: u.slice(0, i), version: Number(u.slice(i + 1)) };
      });
      versions.sort((a, b) => (a.name === b.name ? a.version - b.version : a.name < b.name ? -1 : 1));
      const refs = versions.map((v) => `${v.name}:${v.version}`);
      throw new Conflict(
        `image ${image} is used by ${refs.join(', ')} (every version stays invocable as name:N until it is deleted: delete those versions, or their functions, first)`,
        { field: 'name', image, functions: [...new Set(versions.map((v) => v.name))], versions: refs },
      );
    }
    return async () => {
      await runScript(this.redis, END_IMAGE_DELETE, [mark], [token]).catch(() => {
        // the mark expires on its own; the delete itself is done
      });
    };
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

  /** Deletes a function with all its versions (not its version counter); NotFound when it does not exist. */
  async delete(tenant: string, name: string): Promise<void> {
    const n = await runScript(this.redis, DELETE_FN, [this.index(tenant), this.versionsKey(tenant, name)], [name]);
    this.onChange({ t: tenant, f: name });
    if (n !== 1) throw new NotFound(`function ${name} not found`, { field: 'name' });
  }

  /**
   * Deletes one version of a function, never its latest (what `name` resolves to; deploy a newer version first, or
   * delete the function). The version number is not handed out again (`p fnseq:<t>` is untouched), so `name:N`
   * stays NotFound for good. Once it returns, nothing of the version is left in this store: an image it ran on may
   * be deleted, and its code layer is no longer in {@link codeDigests}.
   * @throws NotFound (no such function, or no version `version` of it), Conflict `{reason: 'latest', latest}` when
   *   `version` is the latest; nothing changed either way.
   * @example
   * await fns.deleteVersion('acme', 'hello', 1);   // hello:1 is gone; hello (say version 3) still resolves
   */
  async deleteVersion(tenant: string, name: string, version: number): Promise<void> {
    const r = (await runScript(this.redis, DELETE_VERSION, [this.index(tenant), this.versionsKey(tenant, name)], [name, String(version)])) as number;
    if (r === -1) throw new NotFound(`function ${name} not found`, { field: 'name' });
    if (r === -2) {
      throw new Conflict(`version ${version} is the latest version of ${name}: deploy a newer version first, or delete the function`, { field: 'version', reason: VERSION_IS_LATEST, latest: version });
    }
    if (r === -3) throw new NotFound(`function ${name} has no version ${version}`, { field: 'version' });
    this.onChange({ t: tenant, f: name });
  }

  /** Deletes every function of a tenant (tenant deletion); returns the names removed. */
  async deleteAll(tenant: string): Promise<string[]> {
    const names = await this.redis.hkeys(this.index(tenant));
    const multi = this.redis.multi();
    for (const n of names) multi.del(this.versionsKey(tenant, n));
    multi.del(this.index(tenant), this.seq(tenant), this.imageGenKey(tenant));
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
