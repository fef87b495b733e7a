/**
 * @module gateway/auth
 * Bearer-key authentication and the two roles. The admin key is compared by hash in constant time; tenant
 * keys are found by their sha256 in Redis (services/store/keys.ts). The admin key is not a tenant key: admin
 * routes take only it, tenant routes only a tenant's key, so an operator cannot act inside a tenant by
 * accident and a tenant can never reach another tenant's namespace (every tenant route scopes to the key's
 * tenant, not to anything in the request).
 *
 * @example
 * app.use('/v1/*', authenticate({ store, adminKeyHash }));
 * app.post('/v1/tenants', requireAdmin(), handler);
 * app.get('/v1/functions', requireTenant(), (c) => c.json(tenantOf(c)));
 */
import type { Context, MiddlewareHandler } from 'hono';
import { Forbidden, Unauthorized } from '../common/errors.ts';
import { hashKey, sameHash } from '../store/keys.ts';
import type { MetadataStore } from '../store/metadata.ts';
import type { GatewayEnv, Principal } from './context.ts';

/** The key in `Authorization: Bearer <key>`, or null when the header is absent. */
export function bearerKey(header: string | undefined): string | null {
  if (header === undefined) return null;
  const m = /^Bearer[ \t]+([\x21-\x7e]+)[ \t]*$/i.exec(header);
  if (!m) throw new Unauthorized('Authorization must be "Bearer <key>"');
  return m[1]!;
}

/**
 * sha256 of recently presented keys: every request hashes its key, and a hot key's hash is worth keeping
 * (the sha256 was ~1% of the host's CPU under load). Bounded; oldest entries go first.
 */
const hashes = new Map<string, string>();
const MAX_HASHES = 10_000;
function hashOf(key: string): string {
  let h = hashes.get(key);
  if (h === undefined) {
    h = hashKey(key);
    if (hashes.size >= MAX_HASHES) hashes.delete(hashes.keys().next().value!);
    hashes.set(key, h);
  }
  return h;
}

/** Resolves a presented key to its principal; Unauthorized when it is unknown. */
export async function principalOf(key: string, deps: { store: MetadataStore; adminKeyHash: string }): Promise<Principal> {
  const h = hashOf(key);
  if (sameHash(h, deps.adminKeyHash)) return { kind: 'admin' };
  const rec = await deps.store.lookupKeyHash(h);
  if (!rec) throw new Unauthorized('unknown or revoked API key');
  return { kind: 'tenant', tenant: rec.tenant, keyId: rec.id };
}

/** The principal of the request's bearer key, recorded as `c.var.principal`; Unauthorized without a valid key. */
export async function authenticateRequest(c: Context<GatewayEnv>, deps: { store: MetadataStore; adminKeyHash: string }): Promise<Principal> {
  const key = bearerKey(c.req.header('authorization'));
  if (key === null) throw new Unauthorized('missing Authorization: Bearer <key>');
  const p = await principalOf(key, deps);
  c.set('principal', p);
  return p;
}

/** Requires a valid key and records who presented it as `c.var.principal`. */
export function authenticate(deps: { store: MetadataStore; adminKeyHash: string }): MiddlewareHandler<GatewayEnv> {
  return async function authenticate(c, next) {
    await authenticateRequest(c, deps);
    await next();
  };
}

/** The tenant `p` acts as; Forbidden for the admin key (it does not act as a tenant). */
function tenantName(p: Principal): string {
  if (p.kind !== 'tenant') throw new Forbidden('this route needs a tenant key (the admin key does not act as a tenant)');
  return p.tenant;
}

/**
 * `authenticate` + `requireTenant` in one call, for a route that authenticates itself (the invoke route, ahead
 * of the /v1/* middleware): the calling tenant's name, `c.var.principal` set; the same errors.
 */
export async function authenticateTenant(c: Context<GatewayEnv>, deps: { store: MetadataStore; adminKeyHash: string }): Promise<string> {
  return tenantName(await authenticateRequest(c, deps));
}

export function requireAdmin(): MiddlewareHandler<GatewayEnv> {
  return async function requireAdmin(c, next) {
    if (c.var.principal.kind !== 'admin') throw new Forbidden('this route needs the admin key');
    await next();
  };
}

export function requireTenant(): MiddlewareHandler<GatewayEnv> {
  return async function requireTenant(c, next) {
    tenantName(c.var.principal);
    await next();
  };
}

/** The calling tenant's name (after requireTenant). */
export function tenantOf(c: Context<GatewayEnv>): string {
  return tenantName(c.var.principal);
}
