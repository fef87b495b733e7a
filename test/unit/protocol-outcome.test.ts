/**
 * How a process's end maps to the typed errors (runtime/host/outcome.ts): pure logic, table-driven.
 */
import { describe, expect, it } from 'vitest';
import { Crashed, OutOfMemory } from '../../services/common/errors.ts';
import { deathError } from '../../runtime/host/outcome.ts';

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
