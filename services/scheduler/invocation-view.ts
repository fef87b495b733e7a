/**
 * @module scheduler/invocation-view
 * An invocation record as callers see it: `GET /v1/invocations/:id`, the dead-letter list and completion
 * callbacks (./callbacks.ts) render it the same way. The tenant is left out (the caller is the tenant), and
 * the function's response becomes `result`: the parsed value when it is JSON, the text when it is UTF-8,
 * else base64 with `resultEncoding: "base64"` (`resultStatus` when the function answered other than 200).
 *
 * @example
 * c.json(renderInvocation(await client.get(tenant, id)));
 */
import type { InvocationResponse } from '../common/model.ts';
import type { InvocationRecord } from './types.ts';

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

/** The record as callers see it (see the module comment). */
export function renderInvocation(rec: InvocationRecord): Record<string, unknown> {
  const { response, tenant: _tenant, ...rest } = rec;
  const out: Record<string, unknown> = { ...rest };
  if (response && rec.status === 'succeeded') {
    Object.assign(out, renderResult(response));
    if (response.status !== 200) out.resultStatus = response.status;
  }
  return out;
}
