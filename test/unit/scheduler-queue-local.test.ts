/**
 * Co-located dispatch (services/scheduler/local-dispatch.ts) against a real Redis: a client with
 * `localDispatch: true` and a scheduler in the same process hand sync calls over in-process when the node can
 * place them at once, and take the queue otherwise. Redis MONITOR tells which path a call took (a queued
 * call pushes onto `P:fast:*`); sandboxes are faked (test/fixtures/scheduler/fake-executor.ts).
 */
import { describe, expect, it } from 'vitest';
import { Redis } from 'ioredis';
import { randomUUID } from 'node:crypto';
import { connect } from 'node:net';
import { once } from 'node:events';
import { redisUrl } from '../helpers/redis.ts';
import { createInvocationClient } from '../../services/scheduler/client.ts';
import { createScheduler, type Scheduler } from '../../services/scheduler/scheduler.ts';
import { createMetrics } from '../../services/common/metrics.ts';
import { createLogger } from '../../services/common/log.ts';
import { FnhostError } from '../../services/common/errors.ts';
import { FakeExecutor, fnv } from '../fixtures/scheduler/fake-executor.ts';
import type { FunctionVersion } from '../../services/common/model.ts';
import type { InvocationClient } from '../../services/scheduler/types.ts';
import { until } from '../helpers/until.ts';
import { useRedis, useCleanups, keysWithoutTtl } from '../helpers/hooks.ts';

const silent = createLogger('test', 'silent');
const redis = useRedis();

const cleanups = useCleanups();

/**
 * Every Redis command line (MONITOR's text form) that mentions `prefix`. A raw socket: ioredis' monitor mode
 * trips over replies of its own start-up commands ("Command queue state error").
 */
async function monitor(prefix: string): Promise<{ lines: string[]; stop: () => Promise<void> }> {
  const u = new URL(redisUrl());
  const sock = connect(Number(u.port || 6379), u.hostname);
  await once(sock, 'connect');
  const lines: string[] = [];
  let buf = '';
  sock.setEncoding('utf8');
  sock.on('data', (d: string) => {
    buf += d;
    let nl: number;
    while ((nl = buf.indexOf('\r\n')) >= 0) {
      const line = buf.slice(0, nl);
      buf = buf.slice(nl + 2);
      if (line.includes(`"${prefix}:`)) lines.push(line);
    }
  });
  sock.write('MONITOR\r\n');
  await until(() => buf.length > 0 || lines.length > 0, (v) => v); // +OK
  return { lines, stop: async () => void sock.destroy() };
}

interface Env {
  prefix: string;
  client: InvocationClient;
  sched: Scheduler;
  exec: FakeExecutor;
  fn: (over?: Partial<FunctionVersion>) => FunctionVersion;
  /** commands that touched the fast lane's lists since the last call */
  queued: () => string[];
  /** every command MONITOR showed under the prefix */
  commands: string[];
}

async function env(): Promise<Env> {
  const prefix = `tl-${randomUUID().slice(0, 8)}`;
  const exec = new FakeExecutor();
  const sched = createScheduler({
    redisUrl: redisUrl(), prefix, nodeId: 'n1', executor: exec, capacityMb: 4096, keepAliveMs: 60_000,
    metrics: createMetrics({ defaultMetrics: false }), logger: silent, pool: { kinds: { node: { min: 1, max: 4 } } },
  });
  await sched.start();
  const client = createInvocationClient({ redisUrl: redisUrl(), prefix, localDispatch: true });
  const mon = await monitor(prefix);
  let seen = 0;
  cleanups.push(async () => {
    await mon.stop();
    await client.close();
    await sched.close(5000);
    expect(exec.live.size).toBe(0);
    expect(await keysWithoutTtl(redis, prefix)).toEqual([]);
    const keys = await redis.keys(`${prefix}:*`);
    if (keys.length) await redis.del(...keys);
  });
  // the node is the only one on this prefix (its tenant scan says so within 2 s): cold starts may go local too
  await until(() => redis.zcard(`${prefix}:nodes`), (n) => n === 1);
  const tenant = `ten-${randomUUID().slice(0, 6)}`;
  const queued = () => {
    const fast = mon.lines.slice(seen).filter((l) => (l.includes(`"${prefix}:fast:`) || l.includes(`"${prefix}:fastn:`)) && !/"blmpop"/i.test(l));
    seen = mon.lines.length;
    return fast;
  };
  return { prefix, client, sched, exec, fn: (over = {}) => fnv({ tenant, ...over }), queued, commands: mon.lines };
}

const ev = (o: unknown) => ({ kind: 'event' as const, body: Buffer.from(JSON.stringify(o)) });
/** MONITOR's stream lags the commands a little: send a marker command and wait until MONITOR has shown it. */
async function settleMonitor(e: Env) {
  const marker = `${e.prefix}:marker:${randomUUID()}`;
  await redis.exists(marker);
  await until(() => e.commands.some((l) => l.includes(marker)), (v) => v);
}

describe('local dispatch', () => {
  it('an idle warm instance takes the call in-process: no fast-lane push, record and logs still written', async () => {
    const e = await env();
    const fn = e.fn();
    await until(() => e.sched.pool.idleCount('node'), (n) => n > 0);
    const first = await e.client.invoke({ fn, payload: ev({ n: 1 }), mode: 'sync' });
    expect(first.record.start).toBe('cold');
    const second = await e.client.invoke({ fn, payload: ev({ n: 2, log: 'hello from local' }), mode: 'sync' });
    expect(second.record.start).toBe('warm');
    expect(second.record.status).toBe('succeeded');
    expect(Buffer.from(JSON.parse(second.response.body.toString()).echo, 'base64').toString()).toBe(JSON.stringify({ n: 2, log: 'hello from local' }));
    expect(e.exec.specialised).toBe(1);
    // a GET right after the response never 404s (the in-process map, then Redis)
    const got = await e.client.get(fn.tenant, second.record.id);
    expect(got?.status).toBe('succeeded');
    expect(got?.response?.body.toString()).toBe(second.response.body.toString());
    // the final record reaches Redis (another client, as another gateway process would read it)
    const other = createInvocationClient({ redisUrl: redisUrl(), prefix: e.prefix });
    try {
      const rec = await until(() => other.get(fn.tenant, second.record.id), (r) => r?.status === 'succeeded');
      expect(rec!.start).toBe('warm');
      expect(rec!.response!.body.toString()).toBe(second.response.body.toString());
      const lines = await until(() => other.logs(fn.tenant, { invocation: second.record.id }), (l) => l.length > 0);
      expect(lines[0]!.line).toBe('hello from local');
    } finally {
      await other.close();
    }
    await settleMonitor(e);
    expect(e.queued()).toEqual([]);
  });

  it('falls back to the queue when the node cannot place the call now (function at its instance cap)', async () => {
    const e = await env();
    const fn = e.fn({ maxInstances: 1 });
    await e.client.invoke({ fn, payload: ev({}), mode: 'sync' });
    await settleMonitor(e);
    e.queued();
    const slow = e.client.invoke({ fn, payload: ev({ sleep: 300 }), mode: 'sync' });
    await until(() => e.sched.instances.list().some((i) => i.inFlight > 0), (v) => v);
    const t0 = Date.now();
    const queuedCall = await e.client.invoke({ fn, payload: ev({ after: true }), mode: 'sync' });
    expect(Date.now() - t0).toBeGreaterThanOrEqual(150); // it waited for the one instance
    expect(queuedCall.record.start).toBe('warm');
    expect((await slow).record.status).toBe('succeeded');
    await settleMonitor(e);
    const pushes = e.queued();
    expect(pushes.length).toBeGreaterThan(0); // the second call went through the fast lane
    expect(e.sched.instances.list()).toHaveLength(1);
  });

  it('the client option is off by default: such a client always takes the queue', async () => {
    const e = await env();
    const fn = e.fn();
    await e.client.invoke({ fn, payload: ev({}), mode: 'sync' });
    const plain = createInvocationClient({ redisUrl: redisUrl(), prefix: e.prefix });
    try {
      await settleMonitor(e);
      e.queued();
      const r = await plain.invoke({ fn, payload: ev({}), mode: 'sync' });
      expect(r.record.start).toBe('warm');
      await settleMonitor(e);
      expect(e.queued().length).toBeGreaterThan(0);
    } finally {
      await plain.close();
    }
  });

  it('a fatal error on the local path comes back typed and retires the instance; the next call starts a new one', async () => {
    const e = await env();
    const fn = e.fn();
    const ok = await e.client.invoke({ fn, payload: ev({}), mode: 'sync' });
    const before = e.sched.instances.list().map((i) => i.handle!.id);
    expect(before).toHaveLength(1);
    const err = await e.client.invoke({ fn, payload: ev({ fail: 'Crashed' }), mode: 'sync' }).then(() => null, (x: unknown) => x);
    expect(err).toBeInstanceOf(FnhostError);
    expect((err as FnhostError).type).toBe('Crashed');
    const id = (err as FnhostError).details.invocationId as string;
    expect(id).toMatch(/^[0-9a-f-]{36}$/);
    expect((err as FnhostError).details.start).toBe('warm');
    expect((await e.client.get(fn.tenant, id))?.status).toBe('failed');
    expect(e.sched.instances.list().map((i) => i.handle?.id)).not.toContain(before[0]);
    await until(() => e.sched.pool.idleCount('node'), (n) => n > 0);
    const next = await e.client.invoke({ fn, payload: ev({}), mode: 'sync' });
    expect(next.record.start).toBe('cold');
    expect(JSON.parse(next.response.body.toString()).instance).not.toBe(JSON.parse(ok.response.body.toString()).instance);
    const rec = await until(() => redis.hget(`${e.prefix}:inv:${fn.tenant}:${id}`, 's'), (s) => s === 'failed');
    expect(rec).toBe('failed');
  });

  it('graceful shutdown waits for a local call in flight, then leaves nothing', async () => {
    const e = await env();
    const fn = e.fn();
    await e.client.invoke({ fn, payload: ev({}), mode: 'sync' });
    const p = e.client.invoke({ fn, payload: ev({ sleep: 300 }), mode: 'sync' });
    await until(() => e.sched.instances.list().some((i) => i.inFlight > 0), (v) => v);
    await e.sched.close(5000);
    const r = await p;
    expect(r.record.status).toBe('succeeded');
    expect(r.record.start).toBe('warm');
    expect(e.exec.live.size).toBe(0);
    // its record was written before the scheduler's connection closed
    expect(await redis.hget(`${e.prefix}:inv:${fn.tenant}:${r.record.id}`, 's')).toBe('succeeded');
  });

  it('many concurrent local calls: every one answered once, records all written, nothing left running', async () => {
    const e = await env();
    const fns = Array.from({ length: 4 }, (_, i) => e.fn({ name: `f${i}`, maxInstances: 2 }));
    const rs = await Promise.all(Array.from({ length: 200 }, (_, i) => e.client.invoke({ fn: fns[i % 4]!, payload: ev({ i }), mode: 'sync' })));
    expect(new Set(rs.map((r) => r.record.id)).size).toBe(200);
    rs.forEach((r, i) => expect(Buffer.from(JSON.parse(r.response.body.toString()).echo, 'base64').toString()).toBe(JSON.stringify({ i })));
    expect(e.sched.instances.list().every((i) => i.inFlight === 0)).toBe(true);
    expect(e.sched.instances.list().length).toBeLessThanOrEqual(8);
    await until(async () => {
      const m = redis.pipeline();
      for (const r of rs) m.hget(`${e.prefix}:inv:${r.record.tenant}:${r.record.id}`, 's');
      return ((await m.exec()) ?? []).filter(([, s]) => s === 'succeeded').length;
    }, (n) => n === 200);
  });
});
