/**
 * @module gateway/logs
 * `GET /v1/functions/:name/logs?invocation=<id>&since=<time>&limit=<n>&follow=1` → NDJSON, one
 * `{invocationId, stream, ts, line}` per line. `since` is epoch ms, an ISO date, or a duration back from
 * now (`30s`, `5m`, `2h`). With `follow=1` the response stays open and streams new lines until the caller
 * goes away. Only the caller's tenant's logs are read; an unknown function is 404.
 */
import type { Hono } from 'hono';
import { stream } from 'hono/streaming';
import { InvalidRequest } from '../common/errors.ts';
import type { LogLine } from '../common/model.ts';
import type { LogQuery } from '../scheduler/types.ts';
import type { GatewayDeps, GatewayEnv } from './context.ts';
import { tenantOf } from './auth.ts';
import { resolveFunction } from './functions.ts';

const UNIT_MS: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 };
/** 10,000 lines per request: a page a terminal can take; more with `since` from the last line's ts. */
const MAX_LIMIT = 10_000;

/** Parses `since`: epoch ms, ISO 8601, or `<n><ms|s|m|h|d>` ago. */
export function parseSince(v: string, now = Date.now()): number {
  if (/^[0-9]{1,16}$/.test(v)) return Number(v);
  const m = /^([0-9]{1,9})(ms|s|m|h|d)$/.exec(v);
  if (m) return now - Number(m[1]) * UNIT_MS[m[2]!]!;
  const t = Date.parse(v);
  if (!Number.isNaN(t) && /^\d{4}-\d{2}-\d{2}/.test(v)) return t;
  throw new InvalidRequest('since must be epoch ms, an ISO date or a duration like 5m', { field: 'since' });
}

const ndjson = (l: LogLine) => JSON.stringify({ invocationId: l.invocationId, stream: l.stream, ts: l.ts, line: l.line }) + '\n';

export function registerLogs(app: Hono<GatewayEnv>, deps: GatewayDeps) {
  app.get('/:ref/logs', async (c) => {
    const tenant = tenantOf(c);
    const fn = await resolveFunction(deps.store, tenant, c.req.param('ref'));
    const q: LogQuery = { function: fn.name };
    const inv = c.req.query('invocation');
    if (inv !== undefined) {
      if (!/^[A-Za-z0-9_:-]{1,128}$/.test(inv)) throw new InvalidRequest('invocation is not an invocation id', { field: 'invocation' });
      q.invocation = inv;
    }
    const since = c.req.query('since');
    if (since !== undefined) q.since = parseSince(since);
    const limit = c.req.query('limit');
    if (limit !== undefined) {
      if (!/^[0-9]{1,6}$/.test(limit) || Number(limit) < 1 || Number(limit) > MAX_LIMIT) throw new InvalidRequest(`limit must be 1..${MAX_LIMIT}`, { field: 'limit' });
      q.limit = Number(limit);
    }
    const follow = c.req.query('follow');
    if (follow !== undefined && follow !== '1' && follow !== 'true' && follow !== '0' && follow !== 'false') {
      throw new InvalidRequest('follow must be 1 or 0', { field: 'follow' });
    }
    c.header('content-type', 'application/x-ndjson; charset=utf-8');
    if (follow === '1' || follow === 'true') {
      c.header('cache-control', 'no-cache');
      return stream(c, async (s) => {
        const ac = new AbortController();
        s.onAbort(() => ac.abort());
        try {
          for await (const line of deps.client.followLogs(tenant, q, ac.signal)) {
            if (ac.signal.aborted) break;
            await s.write(ndjson(line));
          }
        } finally {
          ac.abort();
        }
      });
    }
    const lines = await deps.client.logs(tenant, q);
    return c.body(lines.map(ndjson).join(''));
  });
}
