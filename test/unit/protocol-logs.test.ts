/**
 * Log attribution by BEGIN/END markers (runtime/host/logs.ts, protocol.ts "log boundaries"): pure logic
 * over in-memory streams.
 */
import { PassThrough } from 'node:stream';
import { describe, expect, it } from 'vitest';
import type { LogLine } from '../../services/common/model.ts';
import { LogCollector, MAX_LINE_BYTES } from '../../runtime/host/logs.ts';

const MARK = '\x1efnhost:0123456789abcdef:';
const B = `${MARK}B\x1e`;
const E = `${MARK}E\x1e`;

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
const lines = (ls: LogLine[]) => ls.map((l) => `${l.invocationId}:${l.stream}:${l.line}`);

describe('LogCollector', () => {
  it('attributes what lies between BEGIN and END and settles on the END of the streams named', async () => {
    const { c, out, err, sink } = setup();
    c.begin('a');
    let settled = false;
    const s = c.settled(3).then(() => (settled = true));
    out.write(`${B}one\ntwo\n`);
    err.write(`${B}e1\n`);
    out.write(E);
    await tick();
    expect(settled).toBe(false);
    err.write(E);
    await s;
    expect(lines(c.end().lines)).toEqual(['a:stdout:one', 'a:stdout:two', 'a:stderr:e1']);
    expect(sink).toHaveLength(3);
  });

  it('settles at once for a quiet invocation (marked = 0)', async () => {
    const { c } = setup();
    c.begin('a');
    await c.settled(0);
    expect(c.end().lines).toEqual([]);
  });

  it('tags output written while no invocation runs with no invocation, whenever it arrives', async () => {
    const { c, out, sink } = setup();
    c.begin('a');
    out.write(`${B}mine a\n${E}`);
    await c.settled(1);
    c.end();
    c.begin('b');
    // a timer of a's writes after a's END; the pipe delivers it only after the host began b
    out.write('late a\n');
    out.write(`${B}mine b\n${E}`);
    await c.settled(1);
    expect(lines(c.end().lines)).toEqual(['b:stdout:mine b']);
    expect(lines(sink)).toEqual(['a:stdout:mine a', ':stdout:late a', 'b:stdout:mine b']);
  });

  it('finds markers split across chunks and flushes a partial line at the marker', async () => {
    const { c, out } = setup();
    c.begin('a');
    const s = c.settled(1);
    out.write(`${B.slice(0, 3)}`);
    await tick();
    out.write(`${B.slice(3)}no newline${E.slice(0, 7)}`);
    await tick();
    out.write(E.slice(7));
    await s;
    expect(lines(c.end().lines)).toEqual(['a:stdout:no newline']);
  });

  it('treats the marker prefix with an unknown kind as text', async () => {
    const { c, out } = setup();
    c.begin('a');
    const s = c.settled(1);
    out.write(`${B}x${MARK}Zy\n${E}`);
    await s;
    expect(c.end().lines.map((l) => l.line)).toEqual([`x${MARK}Zy`]);
  });

  it('keeps a multi-byte character split across chunks intact', async () => {
    const { c, out } = setup();
    c.begin('a');
    const s = c.settled(1);
    const bytes = Buffer.concat([Buffer.from(B), Buffer.from('héllo wörld\n')]);
    out.write(bytes.subarray(0, B.length + 2));
    await tick();
    out.write(bytes.subarray(B.length + 2));
    out.write(E);
    await s;
    expect(c.end().lines[0]!.line).toBe('héllo wörld');
  });

  it('caps an invocation and says how much it dropped', async () => {
    const { c, out } = setup(100);
    c.begin('a');
    const s = c.settled(1);
    out.write(B);
    for (let i = 0; i < 30; i++) out.write(`line ${String(i).padStart(4, '0')}\n`); // 10 bytes each
    out.write(E);
    await s;
    const ls = c.end().lines;
    expect(ls.slice(0, -1)).toHaveLength(10);
    expect(ls.at(-1)!.line).toBe('[fnhost] log truncated: 200 bytes dropped (cap 100 bytes per invocation)');
    // the next invocation has its own budget
    c.begin('b');
    out.write(`${B}fresh\n${E}`);
    await c.settled(1);
    expect(c.end().lines.map((l) => l.line)).toEqual(['fresh']);
  });

  it('splits a runaway line', async () => {
    const { c, out } = setup();
    c.begin('a');
    const s = c.settled(1);
    out.write(`${B}${'y'.repeat(MAX_LINE_BYTES * 2 + 5)}${E}`);
    await s;
    expect(c.end().lines.map((l) => l.line.length)).toEqual([MAX_LINE_BYTES, MAX_LINE_BYTES, 5]);
  });

  it('settles when a stream ends instead of showing END, and keeps a tail', async () => {
    const { c, out, err } = setup();
    c.begin('a');
    const s = c.settled(3);
    err.write(`${B}Traceback: something bad happened at the very end\n`);
    out.end();
    err.end();
    await s;
    await c.drained();
    expect(c.end().lines.map((l) => l.line)).toEqual(['Traceback: something bad happened at the very end']);
    expect(c.tail('stderr')).toContain('very end');
    expect(c.tail('stderr').length).toBeLessThanOrEqual(64);
  });

  it('without markers gives everything to the running invocation (exec)', async () => {
    const err = new PassThrough();
    const c = new LogCollector({ capBytes: 1000 });
    c.attach(err, 'stderr');
    c.begin('x');
    err.end('a\nb');
    await c.drained();
    expect(lines(c.end().lines)).toEqual(['x:stderr:a', 'x:stderr:b']);
  });
});
