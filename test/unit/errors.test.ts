import { describe, expect, it } from 'vitest';
import { OutOfMemory, errorFromJSON, InvalidRequest, FnhostError } from '../../services/common/errors.ts';

describe('typed errors', () => {
  it.each([
    [new OutOfMemory('out of memory', { limitMb: 64, peakMb: 64 }), 502, 'OutOfMemory'],
    [new InvalidRequest('bad name', { field: 'name' }), 400, 'InvalidRequest'],
  ])('%s has its status and type and survives a JSON round trip', (err, status, type) => {
    expect(err.status).toBe(status);
    const back = errorFromJSON(JSON.parse(JSON.stringify(err.toJSON())).error);
    expect(back).toBeInstanceOf(FnhostError);
    expect(back.type).toBe(type);
    expect(back.message).toBe(err.message);
    expect(back.details).toEqual(err.details);
  });

  it('an unknown type becomes Internal, never a 4xx', () => {
    expect(errorFromJSON({ type: 'Weird', message: 'x' }).status).toBe(500);
  });
});
