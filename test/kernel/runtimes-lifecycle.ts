/**
 * The lifecycle the runtime test files share (runtimes.test.ts and its satellites): one backend per file, and
 * nothing of a test outlives it — every instance it tracked is destroyed after it, every sandbox it made must
 * then be destroyed, and no cgroup or process of ours is left; at the end the code layers go and the backend
 * must report no leftovers (none of the file's cgroups left for the sweep to find).
 *
 * Kept apart from runtimes-backend.ts, which the runtimes bench imports outside vitest.
 *
 * @example
 * const rt = useRuntimeBackend(async (be) => { image = (await be.image('node'))!; });
 * it('…', async () => { const sb = await rt.be.createSandbox(); rt.sandboxes.push(sb); … });
 */
import { afterAll, afterEach, beforeAll, expect } from 'vitest';
import type { Instance } from '../../runtime/host/index.ts';
import type { Sandbox } from '../../services/sandbox/types.ts';
import { backend, removeCodeLayers, type Backend } from './runtimes-backend.ts';

export interface RuntimeTestState {
  /** set in beforeAll */
  be: Backend;
  /** instances of the running test: destroyed after it */
  live: Instance[];
  /** sandboxes of the running test: must be destroyed after it (by their instance or the test) */
  sandboxes: Sandbox[];
}

export function useRuntimeBackend(ready?: (be: Backend) => Promise<void>): RuntimeTestState {
  const rt = { live: [], sandboxes: [] } as unknown as RuntimeTestState;
  beforeAll(async () => {
    rt.be = await backend();
    await ready?.(rt.be);
  });
  afterEach(async () => {
    await Promise.all(rt.live.splice(0).map((i) => i.destroy()));
    for (const sb of rt.sandboxes.splice(0)) expect(sb.state).toBe('destroyed');
    expect(rt.be.leftovers()).toEqual({ cgroups: [], processes: [] });
  });
  afterAll(async () => {
    removeCodeLayers();
    const { leftovers } = (await rt.be?.close()) ?? { leftovers: 0 };
    expect(leftovers).toBe(0);
  });
  return rt;
}
