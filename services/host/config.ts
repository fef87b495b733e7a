/**
 * @module host/config
 * The host's settings, from the environment and the same-named CLI flags (a flag wins):
 *
 * | env | flag | default |
 * | --- | --- | --- |
 * | PORT | --port | 8080 |
 * | HOST | --host | 0.0.0.0 |
 * | FNHOST_STATE_DIR | --state-dir | /var/lib/fnhost/state (layers, bundles, the embedded Redis's data, the admin key) |
 * | REDIS_URL | --redis-url | unset: an embedded redis-server with AOF in the state dir |
 * | FNHOST_ADMIN_KEY | --admin-key | unset: generated on first start, kept in `<state>/admin-key` (0600) |
 * | FNHOST_BASE_DIR | --base-dir | /var/lib/fnhost/base (base images, built by infra/setup.sh) |
 * | FNHOST_NODE_ID | --node-id | the host name (must be unique among schedulers sharing a Redis) |
 * | FNHOST_SCHEDULER | --scheduler | on; `off` makes a gateway-only node (schedulers run elsewhere on the same Redis) |
 * | FNHOST_LOCAL_DISPATCH | --local-dispatch | on: sync calls this host's scheduler can place at once skip the queue (services/scheduler/local-dispatch.ts); `off`: every call through Redis |
 */
import { InvalidRequest } from '../common/errors.ts';

export interface HostConfig {
  port: number;
  host: string;
  stateDir: string;
  redisUrl?: string;
  adminKey?: string;
  baseDir?: string;
  nodeId?: string;
  /** false: this host runs no scheduler (a gateway-only node). */
  scheduler: boolean;
  /** false: sync calls always take the queue, even when this host's scheduler could run them at once. */
  localDispatch: boolean;
}

export const DEFAULT_PORT = 8080;
export const DEFAULT_STATE_DIR = '/var/lib/fnhost/state';

const FLAG_ENV: Record<string, string> = {
  port: 'PORT',
  host: 'HOST',
  'state-dir': 'FNHOST_STATE_DIR',
  'redis-url': 'REDIS_URL',
  'admin-key': 'FNHOST_ADMIN_KEY',
  'base-dir': 'FNHOST_BASE_DIR',
  'node-id': 'FNHOST_NODE_ID',
  scheduler: 'FNHOST_SCHEDULER',
  'local-dispatch': 'FNHOST_LOCAL_DISPATCH',
};

/** The flags `fnhost start` accepts (each takes a value). */
export const HOST_FLAGS = Object.keys(FLAG_ENV);

/**
 * @example
 * hostConfig({ PORT: '9000' }, { 'state-dir': '/tmp/s' });   // { port: 9000, host: '0.0.0.0', stateDir: '/tmp/s', scheduler: true, localDispatch: true }
 */
export function hostConfig(env: NodeJS.ProcessEnv, flags: Record<string, string | undefined> = {}): HostConfig {
  const get = (flag: string) => {
    const v = flags[flag] ?? env[FLAG_ENV[flag]!];
    return v === undefined || v === '' ? undefined : v;
  };
  const portText = get('port') ?? String(DEFAULT_PORT);
  if (!/^[0-9]{1,5}$/.test(portText) || Number(portText) > 65535) throw new InvalidRequest(`PORT ${JSON.stringify(portText)} is not a port number`, { field: 'port' });
  const sched = (get('scheduler') ?? 'on').toLowerCase();
  if (!['on', 'off', '1', '0', 'true', 'false'].includes(sched)) throw new InvalidRequest('FNHOST_SCHEDULER must be on or off', { field: 'scheduler' });
  const local = (get('local-dispatch') ?? 'on').toLowerCase();
  if (!['on', 'off', '1', '0', 'true', 'false'].includes(local)) throw new InvalidRequest('FNHOST_LOCAL_DISPATCH must be on or off', { field: 'local-dispatch' });
  const cfg: HostConfig = {
    port: Number(portText), host: get('host') ?? '0.0.0.0', stateDir: get('state-dir') ?? DEFAULT_STATE_DIR,
    scheduler: ['on', '1', 'true'].includes(sched), localDispatch: ['on', '1', 'true'].includes(local),
  };
  const redisUrl = get('redis-url');
  if (redisUrl) cfg.redisUrl = redisUrl;
  const adminKey = get('admin-key');
  if (adminKey) {
    // 16 characters: the floor below which an operator-chosen key is guessable; generated keys have 43.
    if (adminKey.length < 16 || !/^[\x21-\x7e]+$/.test(adminKey)) throw new InvalidRequest('FNHOST_ADMIN_KEY must be at least 16 printable characters without spaces', { field: 'admin-key' });
    cfg.adminKey = adminKey;
  }
  const baseDir = get('base-dir');
  if (baseDir) cfg.baseDir = baseDir;
  const nodeId = get('node-id');
  if (nodeId) cfg.nodeId = nodeId;
  return cfg;
}
