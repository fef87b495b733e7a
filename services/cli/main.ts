/**
 * @module cli
 * `fnhost <command>`: the host (`start`) and the client commands. Returns the process exit code (see
 * services/cli/api.ts EXIT: 0 ok, 1 the function failed, 2 usage, 3 not allowed, 4 not found, 5 refused,
 * 6 unavailable, 7 server fault).
 *
 * @example
 * fnhost tenants create acme                      # admin: prints the tenant's key once
 * FNHOST_KEY=fnh_… fnhost deploy ./hello --name hello --runtime node --memory 256 --timeout 10s --env GREETING=hi
 * fnhost invoke hello --data '{"name":"x"}'
 */
import { parseArgs, type ParseArgsConfig } from 'node:util';
import { CliError, EXIT, check, request, resolveEndpoint, writeConfigFile } from './api.ts';
import { images, tenants } from './commands/admin.ts';
import { config, deadLetters, deploy, invocation, invoke, list, logs, remove, type Common } from './commands/functions.ts';
import { start } from './commands/start.ts';
import { callbacks } from './commands/callbacks.ts';
import { HOST_FLAGS } from '../host/config.ts';

type Options = NonNullable<ParseArgsConfig['options']>;

const GLOBAL: Options = {
  url: { type: 'string' },
  key: { type: 'string' },
  json: { type: 'boolean' },
  help: { type: 'boolean', short: 'h' },
};

const COMMANDS: Record<string, Options> = {
  deploy: {
    name: { type: 'string', short: 'n' },
    runtime: { type: 'string', short: 'r' },
    handler: { type: 'string' },
    memory: { type: 'string', short: 'm' },
    timeout: { type: 'string', short: 't' },
    env: { type: 'string', short: 'e', multiple: true },
    concurrency: { type: 'string' },
    retries: { type: 'string' },
    public: { type: 'boolean' },
  },
  invoke: {
    data: { type: 'string', short: 'd' },
    file: { type: 'string', short: 'f' },
    async: { type: 'boolean' },
    'content-type': { type: 'string' },
    'idempotency-key': { type: 'string' },
    'callback-url': { type: 'string' },
    verbose: { type: 'boolean', short: 'v' },
  },
  logs: { follow: { type: 'boolean', short: 'f' }, invocation: { type: 'string', short: 'i' }, since: { type: 'string' }, limit: { type: 'string' } },
  ls: {},
  rm: {},
  config: {
    memory: { type: 'string', short: 'm' },
    timeout: { type: 'string', short: 't' },
    env: { type: 'string', short: 'e', multiple: true },
    'unset-env': { type: 'string', multiple: true },
    concurrency: { type: 'string' },
    retries: { type: 'string' },
    public: { type: 'boolean' },
    private: { type: 'boolean' },
  },
  invocation: {},
  'dead-letters': {},
  callbacks: { all: { type: 'boolean' }, limit: { type: 'string' }, cursor: { type: 'string' } },
  tenants: { 'max-memory': { type: 'string' }, 'max-concurrency': { type: 'string' }, 'max-functions': { type: 'string' } },
  images: { force: { type: 'boolean' } },
  login: { admin: { type: 'boolean' } },
  start: Object.fromEntries([...HOST_FLAGS, 'nice'].map((f) => [f, { type: 'string' }])) as Options,
};

const USAGE = `usage: fnhost <command> [options]

host
  start [--port 8080] [--host 0.0.0.0] [--state-dir DIR] [--redis-url URL] [--admin-key KEY]
        [--node-id ID] [--base-dir DIR] [--scheduler on|off] [--nice=-10|off]
                                    run the host (gateway + scheduler + embedded Redis); needs root
  images build [--force]            build the base images (busybox, node, python)

admin (admin key)
  tenants create <name> [--max-memory 1024] [--max-concurrency 100] [--max-functions 100]
  tenants ls | tenants rm <name> | tenants key <name>

functions (tenant key)
  deploy <dir|archive> --name N [--runtime node|python|exec|image:<img>] [--handler H]
         [--memory 256] [--timeout 10s] [--env K=V]... [--concurrency N] [--retries N] [--public]
  invoke <name>[:version] [--data TEXT | --file PATH|-] [--async] [--idempotency-key K] [-v]
         [--callback-url URL]      with --async: POST the final outcome there, signed
  invocation <id>                   status and result of an (async) invocation
  logs <name> [-f] [--invocation ID] [--since 5m]
  ls | rm <name>[:<version>]
  config <name> [--memory 512] [--timeout 10s] [--env K=V]... [--unset-env K]... [--public|--private]
  dead-letters [ls | redrive <id>]
  callbacks [failed [--limit N] [--cursor C]]  completion callbacks that failed (attempts exhausted)
  callbacks redrive <delivery-id> | --all       POST again with fresh attempts
  callbacks rm <delivery-id> | callbacks secret  delete one | the key receivers verify signatures with
  images import <name> <tar> | images ls | images rm <name>

  login --url URL --key KEY [--admin]  check the key and keep url + key in ~/.config/fnhost/config.json (0600)

options: --url URL (FNHOST_URL) --key KEY (FNHOST_KEY) --json; or ~/.config/fnhost/config.json {"url","key","adminKey"}
exit codes: 0 ok, 1 the function failed, 2 usage, 3 not allowed, 4 not found, 5 refused, 6 unavailable, 7 server fault
`;

export async function main(argv: string[]): Promise<number> {
  const [cmd, ...rest] = argv;
  if (!cmd || cmd === 'help' || cmd === '--help' || cmd === '-h') {
    process.stdout.write(USAGE);
    return cmd ? EXIT.ok : EXIT.usage;
  }
  const opts = COMMANDS[cmd];
  if (!opts) {
    process.stderr.write(`fnhost: unknown command ${JSON.stringify(cmd)}\n\n${USAGE}`);
    return EXIT.usage;
  }
  try {
    let parsed;
    try {
      parsed = parseArgs({ args: rest, options: { ...GLOBAL, ...opts }, allowPositionals: true, strict: true });
    } catch (e) {
      throw new CliError(`${(e as Error).message}`, EXIT.usage);
    }
    const v = parsed.values as Record<string, any>;
    const pos = parsed.positionals;
    if (v.help) {
      process.stdout.write(USAGE);
      return EXIT.ok;
    }
    if (cmd === 'start') return await start(v);
    if (cmd === 'login') {
      const ep = resolveEndpoint({ url: v.url, key: v.key }, process.env, !!v.admin);
      if (!v.key) throw new CliError('usage: fnhost login --url <url> --key <key> [--admin]', EXIT.usage);
      // a tenant key lists its functions; the admin key lists tenants: either proves the key before it is kept
      check(await request(ep, { method: 'GET', path: v.admin ? '/v1/tenants' : '/v1/functions' }));
      const file = writeConfigFile(process.env, v.admin ? { url: ep.url, adminKey: v.key } : { url: ep.url, key: v.key });
      process.stdout.write(`saved ${ep.url} and the ${v.admin ? 'admin ' : ''}key in ${file}\n`);
      return EXIT.ok;
    }
    const admin = cmd === 'tenants';
    const c: Common = { json: !!v.json, ep: resolveEndpoint({ url: v.url, key: v.key }, process.env, admin) };
    switch (cmd) {
      case 'deploy':
        return await deploy(c, pos[0], v);
      case 'invoke':
        return await invoke(c, pos[0], v);
      case 'invocation':
        return await invocation(c, pos[0]);
      case 'logs':
        return await logs(c, pos[0], v);
      case 'ls':
        return await list(c);
      case 'rm':
        return await remove(c, pos[0]);
      case 'config':
        return await config(c, pos[0], v);
      case 'dead-letters':
        return await deadLetters(c, pos[0], pos[1]);
      case 'callbacks':
        return await callbacks(c, pos[0], pos[1], v);
      case 'tenants':
        return await tenants(c, pos[0], pos[1], v);
      case 'images':
        return await images(c, pos[0], pos[1], pos[2], v);
    }
    return EXIT.usage;
  } catch (e) {
    if (e instanceof CliError) {
      process.stderr.write(`fnhost: ${e.message}\n`);
      if (e.body && (argv.includes('--json'))) process.stdout.write(JSON.stringify(e.body) + '\n');
      return e.exitCode;
    }
    process.stderr.write(`fnhost: ${(e as Error).stack ?? String(e)}\n`);
    return EXIT.server;
  }
}
