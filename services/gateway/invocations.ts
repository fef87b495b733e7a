/**
 * @module gateway/invocations
 * `GET /v1/invocations/:id` → `{id, function, version, mode, status: queued|running|succeeded|failed,
 * result?, resultEncoding?, error?, attempts, start?: cold|warm, createdAt, startedAt?, finishedAt?, durationMs?}`.
 *
 * `result` is the function's response body: the parsed value when it is JSON, the text when it is UTF-8,
 * else base64 with `resultEncoding: "base64"`. Another tenant's invocation id is NotFound (the client is
 * asked with the caller's tenant, and ids are not enumerable).
 */
import { Hono } from 'hono';
import { NotFound } from '../common/errors.ts';
import type { InvocationResponse } from '../common/model.ts';
import type { InvocationRecord } from '../scheduler/types.ts';
import type { GatewayDeps, GatewayEnv } from './context.ts';
import { requireTenant, tenantOf } from './auth.ts';

function header(h: Record<string, string>, name: string): string | undefined {
  for (const [k, v] of Object.entries(h)) if (k.toLowerCase() === name) return v;
  return undefined;
}

/** The response body as a JSON-friendly value (see the module comment). */
export function renderResult(r: InvocationResponse): { result: unknown; resultEncoding?: 'base64' } {
  const body = Buffer.isBuffer(r.body) ? r.body : Buffer.from(r.body as unknown as Uint8Array);
  const ct = header(r.headers ?? {}, 'content-type') ?? '';
  if (/\bjson\b/i.test(ct)) {
    try {
      return { result: JSON.parse(body.toString('utf8')) };
    } catch {
      // not JSON after all: fall through to text or base64
    }
  }
  const text = body.toString('utf8');
  if (Buffer.from(text, 'utf8').equals(body)) return { result: text };
  return { result: body.toString('base64'), resultEncoding: 'base64' };
}

export function renderInvocation(rec: InvocationRecord): Record<string, unknown> {
  const { response, tenant: _tenant, ...rest } = rec;
  const out: Record<string, unknown> = { ...rest };
  if (response && rec.status === 'succeeded') {
    Object.assign(out, renderResult(response));
    if (response.status !== 200) out.resultStatus = response.status;
  }
  return out;
}

export function invocationRoutes(deps: GatewayDeps): Hono<GatewayEnv> {
  const app = new Hono<GatewayEnv>();
  app.use('*', requireTenant());
  app.get('/:id', async (c) => {
    const id = c.req.param('id');
    const rec = await deps.client.get(tenantOf(c), id);
    if (!rec) throw new NotFound(`invocation ${id} not found`, { field: 'id' });
    return c.json(renderInvocation(rec));
  });
  return app;
}
