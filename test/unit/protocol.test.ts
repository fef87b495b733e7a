/**
 * The wire codec (runtime/protocol.ts): framing, splitting at every byte boundary, limits and bad frames.
 */
import { randomBytes } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { encodeFrame, FrameDecoder, HEADER_BYTES, MsgType, ProtocolError, type Frame } from '../../runtime/protocol.ts';
import { invokeFrame } from '../../runtime/host/instance.ts';

describe('encodeFrame', () => {
  it('lays out len | type | metaLen | meta | body', () => {
    const body = Buffer.from([0, 1, 2, 255]);
    const f = encodeFrame(MsgType.RESULT, { id: 'a', status: 200, headers: {} }, body);
    const meta = JSON.stringify({ id: 'a', status: 200, headers: {} });
    expect(f.readUInt32BE(0)).toBe(f.length - 4);
    expect(f[4]).toBe(MsgType.RESULT);
    expect(f.readUInt32BE(5)).toBe(Buffer.byteLength(meta));
    expect(f.subarray(HEADER_BYTES, HEADER_BYTES + meta.length).toString()).toBe(meta);
    expect(f.subarray(f.length - 4).equals(body)).toBe(true);
  });

  it('counts meta in bytes, not UTF-16 units', () => {
    const f = encodeFrame(MsgType.ERROR, { id: 'é', type: 'FunctionError', message: '💥' });
    const [d] = new FrameDecoder(1 << 20).push(f);
    expect(d!.meta).toEqual({ id: 'é', type: 'FunctionError', message: '💥' });
    expect(d!.body.length).toBe(0);
  });

  it('WAKE is an empty control frame the codec knows', () => {
    const f = encodeFrame(MsgType.WAKE, {});
    const [d] = new FrameDecoder(1 << 20).push(f);
    expect(d).toMatchObject({ type: MsgType.WAKE, meta: {} });
    expect(d!.body.length).toBe(0);
  });

  it('sends an INVOKE body raw, never inside the JSON', () => {
    const body = randomBytes(1000);
    const f = invokeFrame('i1', 123, { kind: 'http', method: 'POST', path: '/x', query: 'a=1', headers: { h: 'v' }, body });
    const [d] = new FrameDecoder(1 << 20).push(f);
    expect(d!.type).toBe(MsgType.INVOKE);
    expect(d!.meta).toEqual({ id: 'i1', kind: 'http', deadline: 123, method: 'POST', path: '/x', query: 'a=1', headers: { h: 'v' } });
    expect(d!.body.equals(body)).toBe(true);
    expect(f.indexOf(body.toString('base64').slice(0, 20))).toBe(-1);
  });
});

describe('FrameDecoder', () => {
  const frames = [
    encodeFrame(MsgType.HELLO, { runtime: 'node', version: 'v22', pid: 1 }),
    encodeFrame(MsgType.RESULT, { id: 'x', status: 201, headers: { a: 'b' } }, randomBytes(300)),
    encodeFrame(MsgType.ERROR, { id: 'y', type: 'FunctionError', message: 'm' }),
    encodeFrame(MsgType.RESULT, { id: 'z', status: 200, headers: {} }, Buffer.alloc(0)),
  ];
  const all = Buffer.concat(frames);
  const check = (out: Frame[]) => {
    expect(out.map((f) => f.type)).toEqual([MsgType.HELLO, MsgType.RESULT, MsgType.ERROR, MsgType.RESULT]);
    expect(out[1]!.body.equals(frames[1]!.subarray(frames[1]!.length - 300))).toBe(true);
    expect(out[3]!.meta).toEqual({ id: 'z', status: 200, headers: {} });
  };

  it('decodes several frames from one chunk', () => {
    check(new FrameDecoder(1 << 20).push(all));
  });

  it('decodes the same frames split at every byte boundary', () => {
    for (let cut = 1; cut < all.length; cut++) {
      const d = new FrameDecoder(1 << 20);
      check([...d.push(all.subarray(0, cut)), ...d.push(all.subarray(cut))]);
    }
  });

  it('decodes the frames fed one byte at a time', () => {
    const d = new FrameDecoder(1 << 20);
    const out: Frame[] = [];
    for (let i = 0; i < all.length; i++) out.push(...d.push(all.subarray(i, i + 1)));
    check(out);
  });

  it('refuses a frame above the cap as soon as its length is known', () => {
    const d = new FrameDecoder(1000);
    const big = encodeFrame(MsgType.RESULT, { id: 'x', status: 200, headers: {} }, Buffer.alloc(2000));
    let err: unknown;
    try {
      d.push(big.subarray(0, 6));
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(ProtocolError);
    expect((err as ProtocolError).frameBytes).toBe(big.length - 4);
  });

  it.each([
    ['an unknown type', () => { const f = encodeFrame(MsgType.HELLO, {}); f[4] = 99; return f; }, /unknown frame type/],
    ['meta that is not JSON', () => { const f = encodeFrame(MsgType.HELLO, { a: 1 }); f[HEADER_BYTES] = 0x7b + 1; return f; }, /not JSON/],
    ['meta longer than the frame', () => { const f = encodeFrame(MsgType.HELLO, {}); f.writeUInt32BE(999, 5); return f; }, /exceeds frame length/],
    ['a length shorter than the header', () => Buffer.from([0, 0, 0, 2, 1, 0]), /shorter than its header/],
    ['meta that is not an object', () => { const m = Buffer.from('42'); const h = Buffer.alloc(9); h.writeUInt32BE(5 + m.length, 0); h[4] = 1; h.writeUInt32BE(m.length, 5); return Buffer.concat([h, m]); }, /not an object/],
  ])('refuses %s', (_name, make, re) => {
    expect(() => new FrameDecoder(1 << 20).push(make())).toThrow(re);
  });
});
