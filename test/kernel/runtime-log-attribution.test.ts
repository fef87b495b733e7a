/**
 * Which invocation owns a log line that the runtime's shim did not write itself (fixtures node-children,
 * python-children): output of child processes sharing the runtime's stdout / stderr, and output written after
 * a handler returned.
 *
 * The rule (runtime/README.md "Logs"), as Lambda has it: a line belongs to the invocation that is running when
 * it is written, whoever writes it — the handler, a child it spawned, a child an earlier invocation left
 * running; a line written while no invocation runs belongs to none: it goes to the sink only, with an empty
 * invocation id (never to the previous invocation, never into any invocation's record).
 *
 * Real sandboxes on the real node base image when present (runtimes-backend.ts); FNHOST_RUNTIMES_BACKEND=process
 * runs the same on host processes.
 */
import { randomBytes } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import type { FunctionVersion, LogLine } from '../../services/common/model.ts';
import type { ResolvedImage } from '../../services/store/types.ts';
import { prepare, specialise, type Instance } from '../../runtime/host/index.ts';
import { codeLayer } from './runtimes-backend.ts';
import { useRuntimeBackend } from './runtimes-lifecycle.ts';
import { until } from '../helpers/until.ts';

interface Style { name: 'node' | 'python'; fixture: string; handler: string }
const STYLES: Style[] = [
  { name: 'node', fixture: 'node-children', handler: 'index.handler' },
  { name: 'python', fixture: 'python-children', handler: 'main.handler' },
];

const images = new Map<string, ResolvedImage>();
const suite = useRuntimeBackend(async (be) => {
  for (const st of STYLES) images.set(st.name, await be.image(st.name));
});
const { live, sandboxes } = suite;

async function instance(style: Style, sink: LogLine[]): Promise<Instance> {
  const sb = await suite.be.createSandbox();
  sandboxes.push(sb);
  const image = images.get(style.name)!;
  const pooled = await prepare(sb, style.name, image);
  const fn: FunctionVersion = {
    tenant: 'rt-tenant', name: `rt-children-${style.name}`, version: 1, runtime: style.name, handler: style.handler,
    codeDigest: 'sha256:test', memoryMb: 128, timeoutMs: 15_000, env: {}, concurrency: 1, public: false,
    createdAt: new Date(0).toISOString(),
  };
  const inst = await specialise(pooled, fn, codeLayer(style.fixture), image, { onLog: (l) => sink.push(l) });
  live.push(inst);
  return inst;
}

let seq = 0;
const newId = () => `inv-${process.pid}-${++seq}-${randomBytes(3).toString('hex')}`;

async function call(inst: Instance, op: string, n: number) {
  const id = newId();
  const r = await inst.invoke({ id, payload: { kind: 'event', body: Buffer.from(JSON.stringify({ op, n })), contentType: 'application/json' } });
  expect(JSON.parse(r.response.body.toString())).toEqual({ n });
  return { id, lines: r.logs.map((l) => [l.invocationId, l.stream, l.line]) };
}

describe.each(STYLES)('$name: output the shim did not write itself', (style) => {
  it("a child process's output (stdio inherited) is the invocation's that spawned and awaited it", async () => {
    const sink: LogLine[] = [];
    const inst = await instance(style, sink);
    const before = await call(inst, 'quiet', 0);
    for (let n = 1; n <= 6; n++) {
      const op = n % 2 ? 'sync' : 'async';
      const r = await call(inst, op, n);
      const want = op === 'sync'
        ? [[r.id, 'stdout', `child ${n}`], [r.id, 'stderr', `child-err ${n}`]]
        : [[r.id, 'stdout', `child ${n}`]];
      expect(r.lines.sort(), `${op} ${n}`).toEqual(want.sort());
      await call(inst, 'quiet', 100 + n);
    }
    // nothing of it went to an earlier invocation
    expect(sink.filter((l) => l.invocationId === before.id)).toEqual([]);
    expect(sink.filter((l) => l.line.startsWith('child')).every((l) => l.invocationId !== '')).toBe(true);
  });

  it('a child an earlier invocation left running: what it writes during a later invocation is that one\'s', async () => {
    const sink: LogLine[] = [];
    const inst = await instance(style, sink);
    for (let n = 1; n <= 3; n++) {
      const spawned = await call(inst, 'outlive', n);
      expect(spawned.lines).toEqual([]);
      // the child writes while `release` runs (it waits for the child's done file)
      const running = await call(inst, 'release', n);
      expect(running.lines).toEqual([[running.id, 'stdout', `late-child ${n}`]]);
      expect(sink.filter((l) => l.invocationId === spawned.id)).toEqual([]);
    }
  });

  it('a grandchild that outlives the child that spawned it: what it writes during a later invocation is that one\'s', async () => {
    const sink: LogLine[] = [];
    const inst = await instance(style, sink);
    for (let n = 1; n <= 3; n++) {
      const spawned = await call(inst, 'orphan', n);
      expect(spawned.lines).toEqual([]);
      const running = await call(inst, 'release', n);
      expect(running.lines).toEqual([[running.id, 'stdout', `orphan-child ${n}`]]);
      expect(sink.filter((l) => l.line === `orphan-child ${n}`).map((l) => l.invocationId)).toEqual([running.id]);
    }
  });

  it('written while no invocation runs: in no invocation\'s logs, sent to the sink with no invocation id', async () => {
    const sink: LogLine[] = [];
    const inst = await instance(style, sink);
    for (const [n, op, text] of [[1, 'later', 'later-child 1'], [2, 'timer', 'timer 2']] as const) {
      const r = await call(inst, op, n);
      expect(r.lines).toEqual([]);
      // nothing runs on the instance until the line is in
      await until(() => sink.some((l) => l.line === text), Boolean, 10_000);
      expect(sink.find((l) => l.line === text)!.invocationId).toBe('');
      // and it does not turn up in the next invocation's record
      expect((await call(inst, 'quiet', 100 + n)).lines).toEqual([]);
    }
  });
});
