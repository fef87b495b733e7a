/**
 * @module runtime/host/specialise
 * The cold start: turn a pooled sandbox into an instance of one function version.
 *
 *   'specialise'
 *     'cgroup caps'   sandbox.setLimits({memoryMb}) — before any of the function's code runs
 *     'mount'         the code layer appears read-only at /var/task (attach into the running pre-booted
 *                     sandbox)
 *     'runtime load'  LOAD → the shim imports the module and resolves the handler → READY
 *   ('cgroup caps' and 'mount' run concurrently: they are independent, and both complete before LOAD.)
 *   exec, pre-started (busybox rootfs already mounted, preboot.ts): 'cgroup caps' (done before the instance is
 *   returned); the code layer is attached at /var/task by the first invocation's exec, in the same request to the
 *   init as its spawn ('mount' of that invocation; services/sandbox ExecSpec.mounts). The process stand-in (no
 *   mount namespace) attaches here instead, and the first invocation's spawn follows that request at once.
 *   exec, not pre-started (image:<name>): nothing runs before the first invocation, whose start() applies the
 *   caps and mounts the rootfs with the code layer at /var/task (spans 'mount' and 'run' of that invocation):
 *   specialise only checks.
 *
 * A pooled sandbox becomes at most one instance. If specialisation fails the sandbox is destroyed (it may
 * hold the function's env and half-imported code) and the error says why: FunctionError with
 * details.phase = 'load' when the module failed to import or has no such handler; Crashed / OutOfMemory when
 * the runtime died while importing; Timeout when the import ran past the function's timeout.
 */
import { Crashed, FunctionError, InvalidRequest, Timeout } from '../../services/common/errors.ts';
import type { FunctionVersion, LogLine } from '../../services/common/model.ts';
import { Attr, withSpan, type Parent } from '../../services/common/telemetry.ts';
import type { CodeLayer, ResolvedImage } from '../../services/store/types.ts';
import { DEFAULT_RESPONSE_CAP_BYTES, encodeFrame, META_HEADROOM_BYTES, MsgType, type LoadMsg } from '../protocol.ts';
import { ChannelClosed } from './channel.ts';
import { ExecInstance } from './exec-instance.ts';
import { RuntimeInstance, type Instance } from './instance.ts';
import { DEFAULT_LOG_CAP_BYTES } from './logs.ts';
import { deathError, withLogs } from './outcome.ts';
import { runtimeKind, type Pooled, type PooledInternal } from './preboot.ts';
import { CODE_DIR } from './shims.ts';

const WAKE_FRAME = encodeFrame(MsgType.WAKE, {});

export interface SpecialiseOptions {
  /** receives every log line of the instance as it is attributed (tagged with its invocation id). */
  onLog?: (line: LogLine) => void;
  /** per-invocation log cap (default 256 KiB). */
  logCapBytes?: number;
  /** response size cap (default 6 MiB, Lambda's). */
  responseCapBytes?: number;
  /** the span 'specialise' hangs under (default: the span running now; pass it when calling after an await). */
  parent?: Parent;
}

/**
 * Specialises `pooled` for `fn` (see the module header). `code` is the function's code layer (null for an
 * image-only exec function); `image` is the image the pooled sandbox was prepared with (node / python) or
 * the image an exec function runs on (busybox, or the tenant's imported image).
 *
 * @example
 * const inst = await specialise(pooled, fn, code, image, { onLog: (l) => logs.push(l) });
 * const { response } = await inst.invoke({ id: 'inv-1', payload: { kind: 'event', body: Buffer.from('{}') } });
 */
export async function specialise(
  pooled: Pooled,
  fn: FunctionVersion,
  code: CodeLayer | null,
  image: ResolvedImage,
  opts: SpecialiseOptions = {},
): Promise<Instance> {
  const p = pooled as PooledInternal;
  const kind = runtimeKind(fn.runtime);
  if (kind !== p.runtime) throw new InvalidRequest(`a ${p.runtime} sandbox cannot run a ${fn.runtime} function`, { field: 'runtime' });
  if (p.taken) throw new InvalidRequest('this pooled sandbox was already specialised', { sandboxId: p.sandbox.id });
  if (kind !== 'exec' && !code) throw new InvalidRequest(`a ${kind} function needs a code layer`, { field: 'codeDigest' });
  if (!p.alive) throw new Crashed('the pooled sandbox is no longer alive', { sandboxId: p.sandbox.id, phase: 'pool' });
  // A pre-started sandbox's rootfs is its pool image's: a function on another image cannot run in it.
  if (p.prestarted && image.digest !== p.image.digest) {
    throw new InvalidRequest(`this pooled sandbox runs image ${p.image.ref}, not ${image.ref}`, { field: 'runtime', sandboxId: p.sandbox.id });
  }
  p.taken = true;
  const logCapBytes = opts.logCapBytes ?? DEFAULT_LOG_CAP_BYTES;
  const responseCapBytes = opts.responseCapBytes ?? DEFAULT_RESPONSE_CAP_BYTES;
  const sb = p.sandbox;
  const attrs = {
    [Attr.tenant]: fn.tenant, [Attr.function]: fn.name, [Attr.version]: fn.version,
    [Attr.runtime]: fn.runtime, [Attr.sandboxId]: sb.id, [Attr.memoryMb]: fn.memoryMb,
  };
  return withSpan('specialise', attrs, async (specSpan) => {
    try {
      // A sandbox created with the function's cap already has it (PrepareOptions.memoryMb).
      const limits = p.memoryMb === fn.memoryMb ? {} : { memoryMb: fn.memoryMb };
      if (kind === 'exec' && p.prestarted && code && !hasMapPath(sb)) {
        // The caps are in place before the instance exists, i.e. before any of the function's processes. The code
        // layer is attached by the first invocation's exec, in the same request to the init (ExecOptions.mounts).
        if (limits.memoryMb !== undefined) await withSpan('cgroup caps', {}, () => sb.setLimits(limits));
        const codeDir = mappedPath(sb, CODE_DIR, code);
        return new ExecInstance(fn, sb, code, image, {}, {
          sink: opts.onLog, logCapBytes, responseCapBytes, codeDir, started: true, mounts: [{ target: CODE_DIR, layers: [code.dir] }],
        });
      }
      if (kind === 'exec' && p.prestarted) {
        // The process stand-in (process-sandbox.ts) maps paths instead of mounting: attach, then the first
        // invocation sends its spawn right behind it (the init handles requests in order) and waits for both
        // (ExecOptions.mounted). Also the way for an image-only function (nothing to attach).
        const mount = code ? withSpan('mount', {}, () => sb.attach(CODE_DIR, [code.dir])) : Promise.resolve();
        mount.catch(() => {}); // awaited by the first invocation; a failure there destroys the instance
        try {
          await withSpan('cgroup caps', {}, () => (limits.memoryMb === undefined ? Promise.resolve() : sb.setLimits(limits)));
        } catch (e) {
          await mount.catch(() => {}); // the sandbox is destroyed below: let the attach settle first
          throw e;
        }
        const codeDir = mappedPath(sb, CODE_DIR, code);
        return new ExecInstance(fn, sb, code, image, {}, { sink: opts.onLog, logCapBytes, responseCapBytes, codeDir, started: true, mounted: mount });
      }
      if (kind === 'exec') {
        // Nothing of the function runs before its first invocation, whose start() applies these caps
        // before the first process (setting them here too would write the same cgroup files twice).
        // The process stand-in (process-sandbox.ts) has no mount namespace: it tells us where /var/task is.
        const codeDir = mappedPath(sb, CODE_DIR, code);
        return new ExecInstance(fn, sb, code, image, limits, { sink: opts.onLog, logCapBytes, responseCapBytes, codeDir });
      }
      const channel = p.channel!;
      // The pooled runtime wakes up while the caps and the mount are done (protocol.ts WAKE).
      channel.send(WAKE_FRAME);
      channel.configure({ sink: opts.onLog, logCapBytes, maxFrameBytes: Math.max(responseCapBytes, DEFAULT_RESPONSE_CAP_BYTES) + META_HEADROOM_BYTES });
      // The mount (done by the init) and the caps (synchronous host-side cgroup writes) are independent:
      // the mount request goes out first so that the init works while the host writes the caps. Both are
      // in place before LOAD, i.e. before any of the function's code runs.
      const mount = withSpan('mount', {}, () => sb.attach(CODE_DIR, [code!.dir]));
      const caps = withSpan('cgroup caps', {}, () => (limits.memoryMb === undefined ? Promise.resolve() : sb.setLimits(limits)));
      const [capsDone, mountDone] = await Promise.allSettled([caps, mount]);
      if (capsDone.status === 'rejected') throw capsDone.reason;
      if (mountDone.status === 'rejected') throw mountDone.reason;
      const codeDir = mappedPath(sb, CODE_DIR, code);
      await withSpan('runtime load', {}, async (span) => {
        const load: LoadMsg = {
          handler: fn.handler,
          codeDir,
          env: fn.env,
          fn: { tenant: fn.tenant, name: fn.name, version: fn.version, memoryMb: fn.memoryMb, timeoutMs: fn.timeoutMs },
          responseCapBytes,
          logMarker: p.marker,
        };
        channel.logs.begin('init');
        channel.send(encodeFrame(MsgType.LOAD, load));
        let timer: NodeJS.Timeout | undefined;
        const expired = new Promise<null>((r) => (timer = setTimeout(() => r(null), fn.timeoutMs)));
        let frame = await Promise.race([channel.next(), expired]);
        // the load's own output (module top-level logs) is complete once its END markers are in
        if (frame && frame.type !== MsgType.HELLO && (await Promise.race([channel.logs.settled(frame.meta.marked ?? 3), expired])) === null) frame = null;
        clearTimeout(timer);
        const record = channel.logs.end();
        if (!frame) throw withLogs(new Timeout(`loading the handler took longer than ${fn.timeoutMs} ms`, { timeoutMs: fn.timeoutMs, phase: 'load' }), record.lines);
        if (frame.type === MsgType.ERROR) {
          throw withLogs(new FunctionError(frame.meta.message, { errorType: frame.meta.errorType, stack: frame.meta.stack, phase: 'load' }), record.lines);
        }
        if (frame.type !== MsgType.READY) throw new Crashed(`runtime sent frame type ${frame.type} instead of READY`, { phase: 'load' });
        if (frame.meta.loadMs !== undefined) span.setAttribute('fnhost.runtime.load_ms', frame.meta.loadMs);
      }, { parent: specSpan });
      return new RuntimeInstance(fn, sb, channel, responseCapBytes);
    } catch (e) {
      await sb.destroy().catch(() => {}); // keep the specialisation failure as the error
      if (e instanceof ChannelClosed) {
        throw deathError(e.status, { limitMb: fn.memoryMb, stderrTail: p.channel?.logs.tail('stderr'), phase: 'load' });
      }
      throw e;
    }
  }, { parent: opts.parent });
}

/** The process stand-in (runtime/host/process-sandbox.ts) has no mount namespace: it maps paths. */
function hasMapPath(sb: unknown): boolean {
  return typeof (sb as { mapPath?: unknown }).mapPath === 'function';
}

function mappedPath(sb: unknown, path: string, code: CodeLayer | null): string {
  const m = (sb as { mapPath?: (p: string) => string | null }).mapPath;
  if (typeof m !== 'function') return path;
  return m.call(sb, path) ?? code?.dir ?? path;
}
