/**
 * @module host/redis-server
 * The embedded Redis of a single-machine host (REDIS_URL unset): a redis-server child with its data in
 * `<state>/redis` as an append-only file, so accepted async invocations survive a restart of the host.
 *
 * It listens on a unix socket only (no TCP port to collide with or expose, and cheaper per command than
 * loopback TCP), created 0700 inside the 0700 state dir. A redis-server left behind by a host that was killed
 * is found by its pid file and stopped before a new one starts (only a process whose command line is
 * redis-server, so a recycled pid is never killed).
 *
 * @example
 * const r = await startEmbeddedRedis('/var/lib/fnhost/state');   // r.url = '/var/lib/fnhost/state/redis/redis.sock'
 * await r.stop();                                                 // SHUTDOWN (AOF flushed), then waits for exit
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, readFile, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { Redis } from 'ioredis';

export interface EmbeddedRedis {
  /** what ioredis takes: the socket path. */
  url: string;
  pid: number;
  stop(): Promise<void>;
}

const SETPRIV = '/usr/bin/setpriv';
/** sun_path is 108 bytes on Linux (unix(7)), including the terminating NUL. */
const MAX_SOCKET_PATH = 107;
/** redis-server loads an AOF of a few hundred MB in seconds on this class of machine; 30 s is generous. */
const START_TIMEOUT_MS = 30_000;

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

async function stopLeftover(pidFile: string) {
  let pid: number;
  try {
    pid = Number((await readFile(pidFile, 'utf8')).trim());
  } catch {
    return;
  }
  if (!Number.isInteger(pid) || pid <= 1 || !alive(pid)) return;
  const cmd = await readFile(`/proc/${pid}/cmdline`, 'utf8').catch(() => '');
  if (!cmd.startsWith('redis-server')) return;
  process.kill(pid, 'SIGTERM');
  const deadline = Date.now() + 10_000;
  while (alive(pid) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
  if (alive(pid)) process.kill(pid, 'SIGKILL');
}

export async function startEmbeddedRedis(stateDir: string, opts: { log?: (line: string) => void } = {}): Promise<EmbeddedRedis> {
  const dir = join(stateDir, 'redis');
  await mkdir(dir, { recursive: true, mode: 0o700 });
  const sock = join(dir, 'redis.sock');
  if (Buffer.byteLength(sock) > MAX_SOCKET_PATH) throw new Error(`state dir path too long for a unix socket (${sock}); use a shorter FNHOST_STATE_DIR or set REDIS_URL`);
  const pidFile = join(dir, 'redis.pid');
  await stopLeftover(pidFile);
  await rm(sock, { force: true });
  const args = [
    '--port', '0', // no TCP at all
    '--unixsocket', sock,
    '--unixsocketperm', '700',
    '--dir', dir,
    '--pidfile', pidFile,
    '--daemonize', 'no',
    '--appendonly', 'yes',
    // everysec: at most one second of acknowledged writes lost on a power cut (Redis's recommended default).
    '--appendfsync', 'everysec',
    '--save', '',
    // BullMQ requires noeviction: an evicted job key would be a lost invocation.
    '--maxmemory-policy', 'noeviction',
    '--logfile', '',
  ];
  // setpriv --pdeathsig TERM (util-linux, always on Debian) makes the kernel send SIGTERM to redis-server when this
  // process dies, even by SIGKILL: Redis then flushes its AOF and exits instead of outliving its host. Without
  // setpriv the pid-file check above stops such a leftover at the next start.
  const useSetpriv = existsSync(SETPRIV);
  const child: ChildProcess = useSetpriv
    ? spawn(SETPRIV, ['--pdeathsig', 'TERM', 'redis-server', ...args], { stdio: ['ignore', 'pipe', 'pipe'] })
    : spawn('redis-server', args, { stdio: ['ignore', 'pipe', 'pipe'] });
  let exited: { code: number | null; signal: string | null } | null = null;
  const tail: string[] = [];
  const onData = (b: Buffer) => {
    for (const l of b.toString().split('\n')) {
      if (!l) continue;
      tail.push(l);
      if (tail.length > 20) tail.shift();
      opts.log?.(l);
    }
  };
  child.stdout!.on('data', onData);
  child.stderr!.on('data', onData);
  const exitPromise = new Promise<void>((res) => child.once('exit', (code, signal) => ((exited = { code, signal }), res())));
  child.once('error', (e) => {
    tail.push(String(e));
    exited ??= { code: -1, signal: null };
  });

  // Poll until it answers PING (it has loaded the AOF by then).
  const deadline = Date.now() + START_TIMEOUT_MS;
  for (;;) {
    if (exited) throw new Error(`redis-server exited during start-up: ${tail.join(' | ')}`);
    const r = new Redis(sock, { lazyConnect: true, maxRetriesPerRequest: 0, retryStrategy: () => null });
    r.on('error', () => {});
    try {
      await r.connect();
      if ((await r.ping()) === 'PONG') {
        r.disconnect();
        break;
      }
    } catch {
      // not up yet
    }
    r.disconnect();
    if (Date.now() > deadline) {
      child.kill('SIGKILL');
      throw new Error(`redis-server did not answer on ${sock} within ${START_TIMEOUT_MS} ms: ${tail.join(' | ')}`);
    }
    await new Promise((res) => setTimeout(res, 20));
  }

  return {
    url: sock,
    pid: child.pid!,
    async stop() {
      if (exited) return;
      // SIGTERM makes redis-server flush and fsync the AOF before exiting (its SHUTDOWN path).
      child.kill('SIGTERM');
      const t = setTimeout(() => child.kill('SIGKILL'), 15_000);
      await exitPromise;
      clearTimeout(t);
    },
  };
}
