/**
 * @module errors
 * The typed errors of fnhost, named for what the caller does next (DESIGN.md "Words"). Every error that
 * crosses a service boundary is one of these; `toJSON()` is the one wire shape
 * (`{"error": {"type", "message", ...details}}`) used by the gateway, the queue and the CLI alike.
 *
 * @example
 * throw new OutOfMemory('function ran out of memory', { limitMb: 64, peakMb: 64 });
 */

/** The type words of DESIGN.md and the gateway's contract, with their HTTP status. */
export const ERROR_STATUS = {
  InvalidRequest: 400,
  Unauthorized: 401,
  Forbidden: 403,
  NotFound: 404,
  Conflict: 409,
  PayloadTooLarge: 413,
  LimitExceeded: 422,
  TooManyRequests: 429,
  Internal: 500,
  FunctionError: 502,
  OutOfMemory: 502,
  Crashed: 502,
  ResponseTooLarge: 502,
  Unavailable: 503,
  Timeout: 504,
} as const;

export type ErrorType = keyof typeof ERROR_STATUS;

export type ErrorDetails = Record<string, unknown>;

/** Base class: a `type` word, an HTTP status, JSON-safe details and an optional `cause`. */
export class FnhostError extends Error {
  readonly type: ErrorType;
  readonly status: number;
  readonly details: ErrorDetails;

  constructor(type: ErrorType, message: string, details: ErrorDetails = {}, options?: { cause?: unknown }) {
    super(message, options);
    this.name = type;
    this.type = type;
    this.status = ERROR_STATUS[type];
    this.details = details;
  }

  toJSON(): { error: { type: ErrorType; message: string } & ErrorDetails } {
    return { error: { ...this.details, type: this.type, message: this.message } };
  }
}

function errorClass<T extends ErrorType>(type: T) {
  return class extends FnhostError {
    constructor(message: string, details: ErrorDetails = {}, options?: { cause?: unknown }) {
      super(type, message, details, options);
    }
  };
}

/** Bad input; `details.field` names the offending field when there is one. Nothing was changed. */
export class InvalidRequest extends errorClass('InvalidRequest') {}
export class Unauthorized extends errorClass('Unauthorized') {}
export class Forbidden extends errorClass('Forbidden') {}
export class NotFound extends errorClass('NotFound') {}
export class Conflict extends errorClass('Conflict') {}
export class PayloadTooLarge extends errorClass('PayloadTooLarge') {}
/** A tenant limit (memory cap, function count, ...) would be exceeded. */
export class LimitExceeded extends errorClass('LimitExceeded') {}
/** Concurrency cap or queue bound reached: retry later. */
export class TooManyRequests extends errorClass('TooManyRequests') {}
/** The handler threw or (exec) exited non-zero: `details` carries message/stack or stderr's tail. */
export class FunctionError extends errorClass('FunctionError') {}
/** The cgroup's OOM killer ended the function: `details.limitMb`, `details.peakMb`. */
export class OutOfMemory extends errorClass('OutOfMemory') {}
/** The function's process exited or died mid-invocation: `details.exitCode` or `details.signal`. */
export class Crashed extends errorClass('Crashed') {}
/** The deadline passed; the instance was killed. `details.timeoutMs`. */
export class Timeout extends errorClass('Timeout') {}
/** The response was above the size cap. `details.limitBytes`. */
export class ResponseTooLarge extends errorClass('ResponseTooLarge') {}
/** A dependency (Redis, the scheduler) is unreachable. */
export class Unavailable extends errorClass('Unavailable') {}
/** A server fault. Never used for bad input. */
export class Internal extends errorClass('Internal') {}

const CLASSES: Record<ErrorType, new (m: string, d?: ErrorDetails, o?: { cause?: unknown }) => FnhostError> = {
  InvalidRequest, Unauthorized, Forbidden, NotFound, Conflict, PayloadTooLarge, LimitExceeded,
  TooManyRequests, Internal, FunctionError, OutOfMemory, Crashed, ResponseTooLarge, Unavailable, Timeout,
};

/** Rebuilds a typed error from its JSON form (e.g. read back from Redis). Unknown types become Internal. */
export function errorFromJSON(json: { type?: string; message?: string } & ErrorDetails): FnhostError {
  const { type, message, ...details } = json;
  const Cls = (type && type in CLASSES ? CLASSES[type as ErrorType] : Internal);
  return new Cls(String(message ?? type ?? 'unknown error'), details);
}

export function isFnhostError(e: unknown): e is FnhostError {
  return e instanceof FnhostError;
}
