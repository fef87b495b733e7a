/**
 * @module sandbox/errors
 * The sandbox's kernel-failure error: an `Internal` fnhost error (a server fault, never bad input) that keeps
 * Node's errno shape from the native side (native/ERRORS.md): `{code: 'EPERM', errno, syscall, path}`.
 *
 * @example
 * try { await sb.start(spec); } catch (e) { if (e instanceof SandboxError && e.code === 'ENOSPC') ... }
 */
import { Internal } from '../common/errors.ts';

export interface ErrnoShape {
  code: string;
  errno: number;
  syscall: string;
  path?: string;
}

export class SandboxError extends Internal {
  readonly code: string;
  readonly errno: number;
  readonly syscall: string;
  readonly path: string | undefined;

  constructor(message: string, e: ErrnoShape, options?: { cause?: unknown }) {
    super(message, { code: e.code, errno: e.errno, syscall: e.syscall, ...(e.path ? { path: e.path } : {}) }, options);
    this.code = e.code;
    this.errno = e.errno;
    this.syscall = e.syscall;
    this.path = e.path;
  }
}

/** Positive errno → Node's code name (the common ones; others become "E<n>"). */
const ERRNO_NAMES: Record<number, string> = {
  1: 'EPERM', 2: 'ENOENT', 3: 'ESRCH', 4: 'EINTR', 5: 'EIO', 7: 'E2BIG', 8: 'ENOEXEC', 9: 'EBADF', 11: 'EAGAIN',
  12: 'ENOMEM', 13: 'EACCES', 14: 'EFAULT', 16: 'EBUSY', 17: 'EEXIST', 19: 'ENODEV', 20: 'ENOTDIR',
  21: 'EISDIR', 22: 'EINVAL', 23: 'ENFILE', 24: 'EMFILE', 26: 'ETXTBSY', 28: 'ENOSPC', 30: 'EROFS',
  36: 'ENAMETOOLONG', 38: 'ENOSYS', 39: 'ENOTEMPTY', 40: 'ELOOP', 95: 'EOPNOTSUPP', 122: 'EDQUOT',
};

export function errnoName(errno: number): string {
  return ERRNO_NAMES[Math.abs(errno)] ?? `E${Math.abs(errno)}`;
}

/** Wraps an error thrown by the addon or by node:fs (both carry code/errno/syscall/path). */
export function fromNodeError(context: string, e: unknown): SandboxError {
  const n = e as Partial<ErrnoShape> & { message?: string };
  if (n && typeof n.code === 'string' && typeof n.errno === 'number') {
    return new SandboxError(`${context}: ${n.message ?? n.code}`, {
      code: n.code, errno: n.errno, syscall: n.syscall ?? '', path: n.path,
    }, { cause: e });
  }
  return new SandboxError(`${context}: ${String((e as Error)?.message ?? e)}`, { code: 'EIO', errno: -5, syscall: '' }, { cause: e });
}
