/**
 * `fnhost start`'s event-loop priority (services/cli/priority.ts): the value asked for, and that applying it
 * changes the calling thread only (checked in a child process, so this test runner keeps its own priority).
 */
import { execFileSync } from 'node:child_process';
import { describe, expect, it } from 'vitest';
import { DEFAULT_HOST_NICE, hostNice } from '../../services/cli/priority.ts';

describe('host nice value', () => {
  it('defaults to −10; the flag wins over FNHOST_NICE; off leaves it alone', () => {
    expect(hostNice({})).toBe(DEFAULT_HOST_NICE);
    expect(DEFAULT_HOST_NICE).toBe(-10);
    expect(hostNice({ FNHOST_NICE: '-5' })).toBe(-5);
    expect(hostNice({ FNHOST_NICE: '-5' }, '3')).toBe(3);
    expect(hostNice({ FNHOST_NICE: 'off' })).toBeNull();
    expect(hostNice({}, 'off')).toBeNull();
  });

  it.each(['-21', '20', 'high', '1.5', '--5'])('refuses %s with a typed InvalidRequest naming the field', (v) => {
    expect(() => hostNice({ FNHOST_NICE: v })).toThrow(expect.objectContaining({ type: 'InvalidRequest', details: expect.objectContaining({ field: 'nice' }) }));
  });

  it('applies to the calling thread only: a worker thread started before keeps nice 0', () => {
    const script = `
      import { Worker } from 'node:worker_threads';
      import { readFileSync, readdirSync } from 'node:fs';
      const { applyHostNice } = await import(${JSON.stringify(new URL('../../services/cli/priority.ts', import.meta.url).pathname)});
      const w = new Worker('setInterval(() => {}, 1000)', { eval: true });
      await new Promise((r) => w.once('online', r));
      const r = applyHostNice({ FNHOST_NICE: '-3' });
      // /proc/self/task/<tid>/stat field 19 is the nice value of each thread
      const nice = (tid) => Number(readFileSync('/proc/self/task/' + tid + '/stat', 'utf8').split(') ')[1].split(' ')[16]);
      const others = readdirSync('/proc/self/task').filter((t) => t !== String(process.pid)).map(nice);
      console.log(JSON.stringify({ r, main: nice(process.pid), others }));
      process.exit(0);
    `;
    const out = JSON.parse(execFileSync(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], { encoding: 'utf8' }));
    expect(out.r).toEqual({ nice: -3 });
    expect(out.main).toBe(-3);
    expect(out.others.length).toBeGreaterThan(0);
    expect(out.others.every((n: number) => n === 0)).toBe(true);
  });
});
