/**
 * @module cli/commands/start
 * `fnhost start`: runs the host in this process (what `npm start` calls) until SIGINT/SIGTERM, then shuts
 * down in order (HTTP, client, scheduler and its sandboxes, Redis) and exits 0.
 */
import { CliError, EXIT } from '../api.ts';
import { hostConfig } from '../../host/config.ts';
import { startHost } from '../../host/index.ts';
import { createLogger } from '../../common/log.ts';
import { sandboxUnavailableReason } from '../../sandbox/index.ts';
import { applyHostNice, hostNice } from '../priority.ts';

export async function start(flags: Record<string, string | undefined>): Promise<number> {
  // Namespaces, cgroups and mounts need root (and CAP_SYS_ADMIN); say so in one sentence instead of failing deep inside.
  const reason = sandboxUnavailableReason();
  if (reason) {
    process.stderr.write(`${reason}\n`);
    return EXIT.usage;
  }
  let cfg;
  try {
    cfg = hostConfig(process.env, flags);
    hostNice(process.env, flags['nice']);
  } catch (e) {
    throw new CliError((e as Error).message, EXIT.usage);
  }
  const log = createLogger('fnhost');
  let host;
  try {
    host = await startHost(cfg, { logger: log });
  } catch (e) {
    const err = e as NodeJS.ErrnoException;
    if (err.code === 'EADDRINUSE') throw new CliError(`port ${cfg.port} on ${cfg.host} is already in use: set PORT or --port`, EXIT.unavailable);
    throw new CliError(`the host did not start: ${err.message}`, EXIT.unavailable);
  }
  // After start-up: the embedded redis-server and the sandbox launcher are already running at their own priority.
  const prio = applyHostNice(process.env, flags['nice']);
  if ('skipped' in prio && prio.skipped !== 'off') log.warn({ reason: prio.skipped }, 'could not raise the host loop priority (FNHOST_NICE)');
  // One write: a reader waiting for the URL line also gets the key lines with it.
  let banner = `fnhost is listening on ${host.url}\n`;
  if (host.adminKey.generated) banner += `admin key (shown once; also in ${host.adminKey.file}, mode 0600):\n  ${host.adminKey.key}\n`;
  process.stdout.write(banner);
  await new Promise<void>((resolve) => {
    let stopping = false;
    const stop = (sig: string) => {
      if (stopping) return;
      stopping = true;
      log.info({ signal: sig }, 'shutting down');
      void host.close().finally(resolve);
    };
    process.once('SIGINT', () => stop('SIGINT'));
    process.once('SIGTERM', () => stop('SIGTERM'));
  });
  return EXIT.ok;
}
