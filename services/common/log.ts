/**
 * @module log
 * The host's own structured logs (pino): JSON lines, human-readable when stderr is a terminal.
 * Level from FNHOST_LOG_LEVEL (default "info"; tests set "silent" unless debugging).
 */
import { pino, type Logger } from 'pino';

export type { Logger };

export function createLogger(name: string, level = process.env.FNHOST_LOG_LEVEL ?? 'info'): Logger {
  const pretty = process.stderr.isTTY && !process.env.FNHOST_LOG_JSON;
  return pino(
    { name, level, base: { pid: process.pid } },
    pretty
      ? pino.transport({ target: 'pino-pretty', options: { destination: 2, colorize: true } })
      : pino.destination(2),
  );
}
