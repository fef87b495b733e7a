/**
 * An instance's invocation deadline (runtime/host/instance.ts): one timer per instance, kept across
 * invocations and re-armed when it fires for an earlier invocation's deadline or when an invocation's own
 * deadline is earlier than it. Each invocation must still time out at ITS deadline — not at one left over
 * from an earlier call, and not later than it.
 *
 * Real sandboxes on the real node base image when present (runtimes-backend.ts).
 */
import { randomBytes } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { Timeout } from '../../services/common/errors.ts';
import type { FunctionVersion } from '../../services/common/model.ts';
import type { ResolvedImage } from '../../services/store/types.ts';
import { prepare, specialise, type Instance } from '../../runtime/host/index.ts';
import { codeLayer } from './runtimes-backend.ts';
import { useRuntimeBackend } from './runtimes-lifecycle.ts';

let image: ResolvedImage;
const suite = useRuntimeBackend(async (be) => {
  image = (await be.image('node'))!;
});
const { live, sandboxes } = suite;

async function sleeper(): Promise<Instance> {
  const fn: FunctionVersion = {
    tenant: 'dl-tenant', name: `dl-${process.pid}-${randomBytes(3).toString('hex')}`, version: 1, runtime: 'node', handler: 'sleep.handler',
    codeDigest: 'sha256:test', memoryMb: 128, timeoutMs: 30_000, env: {}, concurrency: 1, public: false, createdAt: new Date(0).toISOString(),
  };
  const sb = await suite.be.createSandbox();
  sandboxes.push(sb);
  const inst = await specialise(await prepare(sb, 'node', image), fn, codeLayer('node-event'), image, {});
  live.push(inst);
  return inst;
}

const call = (inst: Instance, ms: number, deadline: number) =>
  inst.invoke({ id: `dl-${randomBytes(4).toString('hex')}`, payload: { kind: 'event', body: Buffer.from(JSON.stringify({ ms })) }, deadline });

async function timedOutAfter(p: Promise<unknown>, t0: number): Promise<number> {
  const err = await p.then(
    () => null,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(Timeout);
  return Date.now() - t0;
}

describe('invocation deadline on a reused instance', () => {
  it('times out at its own deadline after the timer fired early for an earlier invocation', async () => {
    const inst = await sleeper();
    // the first call arms the instance's timer for its deadline (t0 + 300) and returns at once
    const t0 = Date.now();
    expect((await call(inst, 0, t0 + 300)).response.status).toBe(200);
    await new Promise((r) => setTimeout(r, 200));
    // the second starts ~200 ms later with a deadline 300 ms out: the timer fires ~100 ms into it and must
    // re-arm for the rest, not end the call then
    const t1 = Date.now();
    const ms = await timedOutAfter(call(inst, 5000, t1 + 300), t1);
    expect(ms).toBeGreaterThanOrEqual(290);
    expect(ms).toBeLessThan(2000);
    expect(inst.alive).toBe(false);
  });

  it('times out at a deadline earlier than the one the timer is armed for', async () => {
    const inst = await sleeper();
    const t0 = Date.now();
    // quick calls with far deadlines keep the timer armed 20 s out
    for (let i = 0; i < 5; i++) expect((await call(inst, 0, t0 + 20_000)).response.status).toBe(200);
    const t1 = Date.now();
    const ms = await timedOutAfter(call(inst, 5000, t1 + 300), t1);
    expect(ms).toBeGreaterThanOrEqual(290);
    expect(ms).toBeLessThan(2000);
  });

  it('serves invocations with a deadline in between without timing them out', async () => {
    const inst = await sleeper();
    // each call's deadline is 150 ms out and each takes ~20 ms: over 40 calls the timer fires (early) several times
    for (let i = 0; i < 40; i++) {
      const { response } = await call(inst, 20, Date.now() + 150);
      expect(JSON.parse(response.body.toString())).toEqual({ ms: 20 });
    }
    expect(inst.alive).toBe(true);
  });
});
