/**
 * How a process's end maps to the typed errors (runtime/host/outcome.ts): pure logic, table-driven.
 */
import { describe, expect, it } from 'vitest';
import { Crashed, FunctionError, OutOfMemory, Timeout } from '../../services/common/errors.ts';
import type { FunctionVersion } from '../../services/common/model.ts';
import type { Sandbox } from '../../services/sandbox/types.ts';
import { deathError, logsOf, timeoutError, withLogs } from '../../runtime/host/outcome.ts';

const MiB = 1024 * 1024;
const st = (over: Partial<{ code: number | null; signal: string | null; oomKilled: boolean; peakMemoryBytes: number }>) => ({
  code: null, signal: null, oomKilled: false, peakMemoryBytes: 0, ...over,
});

describe('deathError', () => {
  it.each([
    ['a cgroup OOM kill', st({ signal: 'SIGKILL', oomKilled: true, peakMemoryBytes: 64 * MiB }), undefined, OutOfMemory, { limitMb: 64, peakMb: 64 }],
    ['V8 giving up on its heap', st({ signal: 'SIGABRT', peakMemoryBytes: 50.25 * MiB }), 'FATAL ERROR: Reached heap limit Allocation failed - JavaScript heap out of memory', OutOfMemory, { limitMb: 64, peakMb: 50.3 }],
    ['an exit code', st({ code: 3 }), undefined, Crashed, { exitCode: 3, signal: null }],
    ['a signal', st({ signal: 'SIGSEGV' }), 'Segmentation fault', Crashed, { exitCode: null, signal: 'SIGSEGV', stderrTail: 'Segmentation fault' }],
  ])('maps %s', (_name, status, tail, Cls, details) => {
    const e = deathError(status, { limitMb: 64, stderrTail: tail });
    expect(e).toBeInstanceOf(Cls);
    expect(e.details).toMatchObject(details);
  });

  it('says when it happened while loading', () => {
    const e = deathError(st({ code: 4 }), { limitMb: 64, phase: 'load' });
    expect(e.message).toBe('function process exited with code 4 while loading the handler');
    expect(e.details.phase).toBe('load');
  });

  it('keeps only the last 2 KiB of stderr', () => {
    const e = deathError(st({ code: 1 }), { limitMb: 64, stderrTail: `${'a'.repeat(5000)}END` });
    expect(String(e.details.stderrTail)).toHaveLength(2048);
    expect(String(e.details.stderrTail).endsWith('END')).toBe(true);
  });
});

describe('timeoutError', () => {
  const fn = { memoryMb: 64, timeoutMs: 300 } as FunctionVersion;
  const sb = (oomKills: number, fail = false) =>
    ({ memory: async () => { if (fail) throw new Error('gone'); return { currentBytes: 0, peakBytes: 60 * MiB, oomKills }; } }) as unknown as Sandbox;

  it('is a Timeout with the peak when the cgroup saw no OOM kill', async () => {
    const e = await timeoutError(sb(0), fn);
    expect(e).toBeInstanceOf(Timeout);
    expect(e.details).toEqual({ timeoutMs: 300, peakMb: 60 });
  });

  it('is OutOfMemory when the OOM killer already fired in the sandbox', async () => {
    const e = await timeoutError(sb(1), fn);
    expect(e).toBeInstanceOf(OutOfMemory);
    expect(e.details).toEqual({ limitMb: 64, peakMb: 60 });
  });

  it('is a plain Timeout when the cgroup cannot be read', async () => {
    const e = await timeoutError(sb(0, true), fn);
    expect(e).toBeInstanceOf(Timeout);
    expect(e.details).toEqual({ timeoutMs: 300 });
  });
});

describe('withLogs', () => {
  it('carries log lines on the error without putting them in its JSON', () => {
    const lines = [{ invocationId: 'i', stream: 'stderr' as const, ts: 1, line: 'x' }];
    const e = withLogs(new FunctionError('boom', { stack: 's' }), lines);
    expect(logsOf(e)).toBe(lines);
    expect(JSON.stringify(e.toJSON())).not.toContain('invocationId');
    expect(logsOf(new Error('plain'))).toEqual([]);
  });
});
