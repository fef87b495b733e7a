/**
 * @module runtime/host
 * The host side of the runtimes, as the scheduler uses it:
 *
 *   prepare(sandbox, runtime, image)               → Pooled    (pool: pre-boot node/python, keep exec as created)
 *   specialise(pooled, fn, codeLayer, image, opts) → Instance  (cold start)
 *   instance.invoke({id, payload, deadline?})      → {response, logs, truncatedLogs, durationMs} | typed error
 *
 * @example
 * const pooled = await prepare(await createSandbox(), 'node', await store.resolve('node'));
 * const inst = await specialise(pooled, fn, await store.codeLayer(fn.codeDigest!), pooled.image, { onLog });
 * const { response } = await inst.invoke({ id, payload });
 */
export { prepare, runtimeKind, type Pooled, type PrepareOptions, type RuntimeKind } from './preboot.ts';
export { specialise, type SpecialiseOptions } from './specialise.ts';
export type { Instance, InvokeRequest, InvokeResult } from './instance.ts';
export { logsOf } from './outcome.ts';
export { DEFAULT_LOG_CAP_BYTES, type LogSink } from './logs.ts';
export { CODE_DIR } from './shims.ts';
export { createProcessSandbox, type ProcessSandbox } from './process-sandbox.ts';
export { DEFAULT_RESPONSE_CAP_BYTES } from '../protocol.ts';
