/**
 * @module log
 * The host's own structured logs (pino): JSON lines, human-readable when stderr is a terminal.
 * Level from FNHOST_LOG_LEVEL (default "info"; tests set "silent" unless debugging).
 *
 * Every line logged while a span is current carries `trace_id` and `span_id` (a pino mixin reads telemetry.ts's
 * current span: synchronously inside a withSpan / runInSpan callback — there is no AsyncLocalStorage, so after
 * an await only loggers bound with `invocationLogger` keep the ids; nothing is added when tracing is off).
 * Per-invocation loggers from `invocationLogger` add the invocation's ids, so a line can be joined with its
 * trace and its function logs.
 */
import { pino, type DestinationStream, type Logger } from 'pino';
import { activeTraceIds, tracingEnabled } from './telemetry.ts';

export type { Logger };

/** Ids a per-invocation log line carries (field names are the log schema: keep them stable). */
export interface InvocationLogIds {
  invocationId?: string;
  tenant?: string;
  function?: string;
  version?: number;
  attempt?: number;
}

/** Marks loggers whose bindings already carry trace_id/span_id (pino children inherit it via the prototype). */
const TRACE_BOUND = Symbol('fnhost.log.traceBound');

function traceMixin(_obj: object, _level: number, logger: Logger): object {
  // Fast path: with tracing off there is never an active span, skip the context lookup. A logger bound to
  // an invocation's trace keeps that one (writing the keys twice would make duplicate JSON keys).
  if (!tracingEnabled() || (logger as unknown as Record<symbol, boolean>)[TRACE_BOUND]) return {};
  return activeTraceIds();
}

/**
 * The logger of one service. `destination` (tests) replaces stderr and always gets JSON.
 *
 * @example
 * const log = createLogger('scheduler');
 * log.info({ node: nodeId }, 'worker started');
 */
export function createLogger(name: string, level = process.env.FNHOST_LOG_LEVEL ?? 'info', destination?: DestinationStream): Logger {
  const pretty = !destination && process.stderr.isTTY && !process.env.FNHOST_LOG_JSON;
  return pino(
    { name, level, base: { pid: process.pid }, mixin: traceMixin },
    destination ? destination : pretty
      ? pino.transport({ target: 'pino-pretty', options: { destination: 2, colorize: true } })
      : pino.destination(2),
  );
}

/**
 * A child logger for one invocation: every line carries its ids (`invocation_id`, `tenant`, `function`,
 * `version`, `attempt`) and the `trace_id` / `span_id` of the span active when it was made, even when a
 * line is written later from a callback outside that span. Undefined ids are left out.
 *
 * @example
 * const log = invocationLogger(baseLog, { invocationId: id, tenant, function: name, version });
 * log.info({ start: 'cold' }, 'invocation started');
 */
export function invocationLogger(base: Logger, ids: InvocationLogIds): Logger {
  const b: Record<string, string | number> = {};
  if (ids.invocationId !== undefined) b.invocation_id = ids.invocationId;
  if (ids.tenant !== undefined) b.tenant = ids.tenant;
  if (ids.function !== undefined) b.function = ids.function;
  if (ids.version !== undefined) b.version = ids.version;
  if (ids.attempt !== undefined) b.attempt = ids.attempt;
  const trace = tracingEnabled() ? activeTraceIds() : {};
  if (!trace.trace_id) return base.child(b);
  const child = base.child({ ...b, ...trace });
  (child as unknown as Record<symbol, boolean>)[TRACE_BOUND] = true;
  return child;
}
