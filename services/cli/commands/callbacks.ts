/**
 * @module cli/commands/callbacks
 * `fnhost callbacks …` (tenant key): completion callbacks of async invocations (services/gateway/callbacks.ts).
 *
 * @example
 * fnhost callbacks failed                 # failed callbacks, newest first (--limit N, --cursor C for the next page)
 * fnhost callbacks redrive <delivery-id>  # POST it again with fresh attempts; `--all` for every one
 * fnhost callbacks rm <delivery-id>
 * fnhost callbacks secret                 # the key receivers verify X-Fnhost-Signature with
 */
import { CliError, EXIT, check, jsonOf, request, type Endpoint } from '../api.ts';
import { parseIntFlag, printJson, table } from '../output.ts';

export interface CallbacksCommon {
  json: boolean;
  ep: Endpoint;
}

export const CALLBACKS_USAGE = 'usage: fnhost callbacks [failed [--limit N] [--cursor C] | redrive <delivery-id> | redrive --all | rm <delivery-id> | secret]';

interface Failed {
  deliveryId: string;
  invocationId: string;
  function: string;
  url: string;
  attempts: number;
  lastError: string;
  lastHttpStatus?: number;
  failedAt: number;
}

/** The receiver's origin only: a URL's path or query may carry the receiver's token (as the host logs it). */
function originOf(url: string): string {
  try {
    return new URL(url).origin;
  } catch {
    return '?';
  }
}

export async function callbacks(c: CallbacksCommon, sub: string | undefined, id: string | undefined, v: Record<string, unknown>): Promise<number> {
  if (!c.ep.key) throw new CliError('no API key: pass --key, set FNHOST_KEY, or put "key" in ~/.config/fnhost/config.json', EXIT.usage);
  const all = v.all === true;
  if ((sub === 'failed' || sub === 'ls' || sub === undefined) && !id && !all) {
    const q = new URLSearchParams();
    if (typeof v.limit === 'string') q.set('limit', String(parseIntFlag(v.limit, '--limit')));
    if (typeof v.cursor === 'string') q.set('cursor', v.cursor);
    const qs = q.size ? `?${q}` : '';
    const page = jsonOf<{ failed: Failed[]; cursor?: string }>(check(await request(c.ep, { method: 'GET', path: `/v1/callbacks/failed${qs}` })));
    if (c.json) return printJson(page), EXIT.ok;
    const rows = page.failed.map((f) => [
      f.deliveryId, f.function, originOf(f.url), f.attempts, f.lastHttpStatus ?? '', f.lastError, new Date(f.failedAt).toISOString(),
    ]);
    process.stdout.write(table(['delivery id', 'function', 'destination', 'attempts', 'status', 'last error', 'failed at'], rows));
    if (page.cursor) process.stdout.write(`more: fnhost callbacks failed --cursor ${page.cursor}\n`);
    return EXIT.ok;
  }
  if (sub === 'redrive' && all && !id) {
    const r = jsonOf<{ redriven: number }>(check(await request(c.ep, { method: 'POST', path: '/v1/callbacks/failed/redrive' })));
    if (c.json) printJson(r);
    else process.stdout.write(`${r.redriven} redriven\n`);
    return EXIT.ok;
  }
  if (sub === 'redrive' && id && !all) {
    const r = jsonOf<{ deliveryId: string }>(check(await request(c.ep, { method: 'POST', path: `/v1/callbacks/failed/${encodeURIComponent(id)}/redrive` })));
    if (c.json) printJson(r);
    else process.stdout.write(`${r.deliveryId}\n`);
    return EXIT.ok;
  }
  if (sub === 'rm' && id && !all) {
    check(await request(c.ep, { method: 'DELETE', path: `/v1/callbacks/failed/${encodeURIComponent(id)}` }));
    if (c.json) printJson({ deleted: id });
    return EXIT.ok;
  }
  if (sub === 'secret' && !id && !all) {
    const r = jsonOf<{ secret: string }>(check(await request(c.ep, { method: 'GET', path: '/v1/callbacks/secret' })));
    if (c.json) printJson(r);
    else process.stdout.write(`${r.secret}\n`);
    return EXIT.ok;
  }
  throw new CliError(CALLBACKS_USAGE, EXIT.usage);
}
