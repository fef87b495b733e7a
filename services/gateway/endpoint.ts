/**
 * @module gateway/endpoint
 * `ANY /fn/:tenant/:name/*` (also `:name:3`): the function as an HTTP endpoint. Method, the path after
 * `/fn/<tenant>/<name>` (percent-encoding kept), the raw query, the headers and the body (bytes, ≤ 6 MB)
 * reach the handler; its status, headers and body come back, plus the X-Fnhost-* headers.
 *
 * Access: a `public` function takes anyone (an Authorization header then belongs to the function and is
 * passed on); otherwise a key of the tenant in the path is required (401 without one, 403 with the admin
 * key or another tenant's key), and that header is not passed on: the function never sees its caller's key.
 */
import type { Context, Hono } from 'hono';
import { Forbidden, NotFound, Unauthorized } from '../common/errors.ts';
import type { InvocationPayload } from '../common/model.ts';
import { readBody } from './body.ts';
import type { GatewayDeps, GatewayEnv, GatewayLimits } from './context.ts';
import { bearerKey, principalOf } from './auth.ts';
import { parseFunctionRef, validateName } from './validate.ts';
import { invocationHeaders, invokeSync } from './invoke.ts';
import type { Admission } from './admission.ts';

/** RFC 9110 §7.6.1 hop-by-hop headers: they describe one connection, never the end-to-end message. */
const HOP_BY_HOP = new Set(['connection', 'keep-alive', 'proxy-connection', 'proxy-authenticate', 'proxy-authorization', 'te', 'trailer', 'transfer-encoding', 'upgrade']);

/** Splits a raw request URL into the path after `/fn/<tenant>/<ref>` and the raw query. */
export function splitEndpointUrl(url: string): { path: string; query: string } {
  const afterScheme = url.indexOf('://');
  const pathStart = url.indexOf('/', afterScheme < 0 ? 0 : afterScheme + 3);
  const full = pathStart < 0 ? '/' : url.slice(pathStart);
  const q = full.indexOf('?');
  const pathname = q < 0 ? full : full.slice(0, q);
  const query = q < 0 ? '' : full.slice(q + 1);
  // pathname is /fn/<tenant>/<ref>[/rest]: skip three segments.
  let i = 0;
  for (let seg = 0; seg < 3 && i >= 0; seg++) i = pathname.indexOf('/', i + 1);
  const path = i < 0 ? '/' : pathname.slice(i);
  return { path: path === '' ? '/' : path, query };
}

export function registerEndpoint(app: Hono<GatewayEnv>, deps: GatewayDeps & { admission: Admission }, limits: GatewayLimits) {
  const handler = async (c: Context<GatewayEnv>) => {
    const tenant = validateName(decodeURIComponent(c.req.param('tenant') ?? ''), 'tenant');
    const { name, version } = parseFunctionRef(decodeURIComponent(c.req.param('name') ?? ''));
    const fn = await deps.store.getFunction(tenant, name, version);
    if (!fn) throw new NotFound(`function ${tenant}/${name}${version ? `:${version}` : ''} not found`);
    let consumedAuth = false;
    if (!fn.public) {
      const key = bearerKey(c.req.header('authorization'));
      if (key === null) throw new Unauthorized(`function ${name} is not public: send a key of tenant ${tenant}`);
      const p = await principalOf(key, deps);
      if (p.kind !== 'tenant' || p.tenant !== tenant) throw new Forbidden(`this key may not invoke functions of tenant ${tenant}`);
      consumedAuth = true;
    }
    const body = await readBody(c.req.raw, limits.syncBodyBytes);
    const headers: Record<string, string> = {};
    c.req.raw.headers.forEach((v, k) => {
      if (HOP_BY_HOP.has(k) || (consumedAuth && k === 'authorization')) return;
      headers[k] = v;
    });
    const { path, query } = splitEndpointUrl(c.req.url);
    const payload: InvocationPayload = { kind: 'http', method: c.req.method, path, query, headers, body };
    const r = await invokeSync(c, deps, fn, payload, 'http');
    const out = new Headers();
    for (const [k, v] of Object.entries(r.response.headers ?? {})) {
      const lk = k.toLowerCase();
      if (HOP_BY_HOP.has(lk) || lk === 'content-length') continue;
      try {
        out.append(k, v);
      } catch {
        // a header the function produced that HTTP cannot carry is dropped, not a 500
      }
    }
    for (const [k, v] of Object.entries(invocationHeaders(r))) out.set(k, v);
    const status = r.response.status >= 200 && r.response.status <= 599 ? r.response.status : 502;
    const nullBody = status === 204 || status === 304 || c.req.method === 'HEAD';
    return new Response(nullBody || r.response.body.length === 0 ? null : r.response.body, { status, headers: out });
  };
  app.all('/fn/:tenant/:name', handler);
  app.all('/fn/:tenant/:name/*', handler);
}
