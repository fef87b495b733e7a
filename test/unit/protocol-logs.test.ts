/**
 * Log attribution by marker (runtime/host/logs.ts): pure logic over in-memory streams.
 */
import { PassThrough } from 'node:stream';
import { describe, expect, it } from 'vitest';
import type { LogLine } from '../../services/common/model.ts';
import { LogCollector, MAX_LINE_BYTES } from '../../runtime/host/logs.ts';

const MARK = '\x1efnhost-end:0123456789abcdef\x1e';

function setup(capBytes = 1 << 20) {
  const out = new PassThrough();
  const err = new PassThrough();
  const sink: LogLine[] = [];
  const c = new LogCollector({ marker: MARK, capBytes, sink: (l) => sink.push(l), tailBytes: 64 });
  c.attach(out, 'stdout');
  c.attach(err, 'stderr');
  return { c, out, err, sink };
}

const tick = () => new Promise((r) => setImmediate(r));

describe('LogCollector', () => {
  it('attributes lines before the marker to the invocation and settles on both markers', async () => {
    const { c, out, err, sink } = setup();
    c.begin('a');
    let settled = false;
    const s = c.settled().then(() => (settled = true));
    out.write('one\ntwo\n');
    err.write('e1\n');
    out.write(MARK);
    await tick();
    expect(settled).toBe(false);
    err.write(MARK);
    await s;
    const rec = c.end();
    expect(rec.lines.map((l) => `${l.invocationId}:${l.stream}:${l.line}`)).toEqual(['a:stdout:one', 'a:stdout:two', 'a:stderr:e1']);
    expect(sink).toHaveLength(3);
  });

  it('finds a marker split across chunks and flushes a partial line at the marker', async () => {
    const { c, out, err, sink } = setup();
    c.begin('a');
    const s = c.settled();
    out.write(`no newline${MARK.slice(0, 5)}`);
    await tick();
    out.write(`${MARK.slice(5)}next\n`);
    err.write(MARK);
    await s;
    expect(c.end().lines.map((l) => l.line)).toEqual(['no newline']);
    // output after the marker (a leftover timer) is tagged with the last invocation but not in its record
    expect(sink.map((l) => [l.invocationId, l.line])).toEqual([['a', 'no newline'], ['a', 'next']]);
    c.begin('b');
    out.write('mine\n');
    out.write(MARK);
    err.write(MARK);
    await c.settled();
    expect(c.end().lines.map((l) => [l.invocationId, l.line])).toEqual([['b', 'mine']]);
  });

  it('keeps a multi-byte character split across chunks intact', async () => {
    const { c, out, err } = setup();
    c.begin('a');
    const s = c.settled();
    const bytes = Buffer.from('héllo wörld\n');
    out.write(bytes.subarray(0, 2));
    await tick();
    out.write(bytes.subarray(2));
    out.write(MARK);
    err.write(MARK);
    await s;
    expect(c.end().lines[0]!.line).toBe('héllo wörld');
  });

  it('caps an invocation and says how much it dropped', async () => {
    const { c, out, err } = setup(100);
    c.begin('a');
    const s = c.settled();
    for (let i = 0; i < 30; i++) out.write(`line ${String(i).padStart(4, '0')}\n`); // 10 bytes each
    out.write(MARK);
    err.write(MARK);
    await s;
    const lines = c.end().lines;
    expect(lines.slice(0, -1)).toHaveLength(10);
    expect(lines.at(-1)!.line).toBe('[fnhost] log truncated: 200 bytes dropped (cap 100 bytes per invocation)');
    // the next invocation has its own budget
    c.begin('b');
    out.write('fresh\n');
    out.write(MARK);
    err.write(MARK);
    await c.settled();
    expect(c.end().lines.map((l) => l.line)).toEqual(['fresh']);
  });

  it('splits a runaway line', async () => {
    const { c, out, err } = setup();
    c.begin('a');
    const s = c.settled();
    out.write('y'.repeat(MAX_LINE_BYTES * 2 + 5));
    out.write(MARK);
    err.write(MARK);
    await s;
    expect(c.end().lines.map((l) => l.line.length)).toEqual([MAX_LINE_BYTES, MAX_LINE_BYTES, 5]);
  });

  it('settles when a stream ends instead of showing the marker, and keeps a tail', async () => {
    const { c, out, err } = setup();
    c.begin('a');
    const s = c.settled();
    err.write('Traceback: something bad happened at the very end\n');
    out.end();
    err.end();
    await s;
    await c.drained();
    expect(c.end().lines.map((l) => l.line)).toEqual(['Traceback: something bad happened at the very end']);
    expect(c.tail('stderr')).toContain('very end');
    expect(c.tail('stderr').length).toBeLessThanOrEqual(64);
  });
});
