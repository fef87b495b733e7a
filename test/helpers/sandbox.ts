/**
 * Shared set-up for sandbox kernel/security tests: a rootfs fixture per file, a unique nodeId per file,
 * leak assertions after every test, and small helpers to run a command and collect its output.
 */
import { afterAll, afterEach, beforeAll, beforeEach } from 'vitest';
import { cleanupLeftovers, createSandbox, warmUp, type CreateOptions, type ExitStatus, type Sandbox, type SandboxProcess, type StartSpec } from '../../services/sandbox/index.ts';
import { assertNoLeaks, openFds } from './leaks.ts';
import { makeRootfs, type RootfsFixture } from './sandbox-rootfs.ts';

export interface Collected {
  stdout: string;
  stderr: string;
  status: ExitStatus;
}

/** Waits for the process's end and for both output streams to reach EOF. */
export async function collect(p: SandboxProcess): Promise<Collected> {
  let stdout = '';
  let stderr = '';
  const drained = (s: NodeJS.ReadableStream & { closed?: boolean; destroyed?: boolean }, add: (d: string) => void) =>
    new Promise<void>((r) => {
      s.on('data', (d) => add(String(d)));
      if (s.closed || s.destroyed) r();
      else s.on('close', () => r());
    });
  const ends = [drained(p.stdout, (d) => (stdout += d)), drained(p.stderr, (d) => (stderr += d))];
  const status = await p.exited;
  await Promise.all(ends);
  return { stdout, stderr, status };
}

export interface SandboxTestEnv {
  nodeId: string;
  fx(): RootfsFixture;
  /** creates a sandbox under this file's nodeId; destroyed after the test if the test did not */
  create(opts?: CreateOptions): Promise<Sandbox>;
  /** create + start `argv` on the fixture's base layer + collect + destroy */
  run(argv: string[], spec?: Partial<StartSpec>, opts?: CreateOptions): Promise<Collected>;
}

/** Call at the top of a test file. `name` makes the nodeId unique to the file. */
export function useSandboxEnv(name: string): SandboxTestEnv {
  const nodeId = `test-${name}-${process.pid}`;
  let fixture: RootfsFixture | undefined;
  let made: Sandbox[] = [];
  let fdsBefore: string[] = [];
  beforeAll(async () => {
    fixture = makeRootfs();
    // the process-wide template namespace fd is opened once, not by whichever test comes first
    if (process.getuid?.() === 0) await warmUp();
  });
  afterAll(async () => {
    fixture?.remove();
    // the node's own cgroup dir (fnhost/<nodeId>) goes too: nothing of this file is left
    if (process.getuid?.() === 0) await cleanupLeftovers(nodeId);
  });
  beforeEach(() => { fdsBefore = openFds(); });
  afterEach(async () => {
    await Promise.all(made.map((s) => s.destroy()));
    made = [];
    await assertNoLeaks(nodeId, { paths: [fixture!.dir], fdsBefore });
  });
  const env: SandboxTestEnv = {
    nodeId,
    fx: () => fixture!,
    async create(opts = {}) {
      const sb = await createSandbox({ nodeId, ...opts });
      made.push(sb);
      return sb;
    },
    async run(argv, spec = {}, opts = {}) {
      const sb = await env.create(opts);
      try {
        const p = await sb.start({ layers: [fixture!.base], argv, ...spec });
        p.stdin.end();
        return await collect(p);
      } finally {
        await sb.destroy();
      }
    },
  };
  return env;
}
