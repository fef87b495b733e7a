/**
 * Log attribution end to end (the rule of test/kernel/runtime-log-attribution.test.ts, through a real host and
 * the logs API): what a node function's child process writes while the function runs is in that invocation's
 * logs (`?invocation=<id>`), not an earlier one's; what is written while no invocation runs is in the function's
 * log with an empty invocation id, and in no invocation's.
 */
import { readFileSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { tarGz } from '../../services/cli/pack.ts';
import { deployForm, e2eSkipReason, startTestHost, until, type TestHost } from './host-harness.ts';

const skip = e2eSkipReason();
if (skip) console.warn(`log attribution e2e skipped: ${skip}`);

const CODE = tarGz({ 'index.mjs': readFileSync(new URL('../fixtures/functions/node-children/index.mjs', import.meta.url), 'utf8') });

interface Line { invocationId: string; stream: string; line: string }

describe.skipIf(!!skip)('log attribution over HTTP', () => {
  let t: TestHost;
  let key: string;

  const invoke = async (op: string, n: number) => {
    const r = await t.req('POST', '/v1/functions/kids/invoke', { key, body: JSON.stringify({ op, n }), headers: { 'content-type': 'application/json' } });
    expect(r.status).toBe(200);
    expect(await r.json()).toEqual({ n });
    return r.headers.get('x-fnhost-invocation-id')!;
  };
  const logs = async (query: string): Promise<Line[]> => {
    const text = await (await t.req('GET', `/v1/functions/kids/logs${query}`, { key })).text();
    return text.trim() ? text.trim().split('\n').map((l) => JSON.parse(l) as Line) : [];
  };

  beforeAll(async () => {
    t = await startTestHost('logattr', { scheduler: { keepAliveMs: 60_000 } });
    key = await t.tenant('acme');
    const r = await t.req('PUT', '/v1/functions/kids', { key, body: deployForm({ runtime: 'node', handler: 'index.handler' }, CODE) });
    expect(r.status, await r.clone().text()).toBe(201);
  }, 60_000);
  afterAll(async () => t?.close(), 60_000);

  it("a child process's output is its invocation's; output while none runs is nobody's", async () => {
    const quiet = await invoke('quiet', 0);
    const child = await invoke('sync', 1);
    const mine = await until(async () => {
      const ls = await logs(`?invocation=${child}`);
      return ls.length >= 2 ? ls : null;
    }, 10_000, 'the child invocation\'s lines');
    expect(mine.map((l) => `${l.stream}:${l.line}`).sort()).toEqual(['stderr:child-err 1', 'stdout:child 1']);
    expect(await logs(`?invocation=${quiet}`)).toEqual([]);

    const timer = await invoke('timer', 2);
    const late = await until(async () => (await logs('')).find((l) => l.line === 'timer 2') ?? null, 10_000, 'the timer line');
    expect(late.invocationId).toBe('');
    expect(await logs(`?invocation=${timer}`)).toEqual([]);
  });
});
