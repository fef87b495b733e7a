/**
 * `npm run bench:images` — one JSON object on stdout, progress on stderr:
 *   import_3layer          a 3-layer OCI image (busybox + python + fnhost layers of the base store, re-tarred by
 *                          tar(1) and gzipped: ~47 MB unpacked) imported into a cold store, then again (warm)
 *   overlay_mount_umount   mount + umount of the node image's read-only overlay, n = 200
 *   image_size_mb          the base images' sizes (sum of their layers' file bytes)
 *   node_start             `node -e 0` chrooted into the mounted node image and on the host, n = 50 each,
 *                          interleaved in the same run
 * Mounts and timings are done by a small python3 helper (ctypes mount(2)/umount2(2), fork + chroot + exec)
 * inside `unshare -m`, so no Node-side spawn cost is counted and no mount can outlive the run.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { openImageStore } from '../../services/store/index.ts';
import { writeOciLayout } from '../fixtures/oci/tars.ts';

const say = (s: string) => process.stderr.write(`bench:images: ${s}\n`);

function stats(xs: number[]): { median_ms: number; p90_ms: number; n: number } {
  const s = [...xs].sort((a, b) => a - b);
  const q = (p: number) => s[Math.min(s.length - 1, Math.ceil(p * s.length) - 1)]!;
  const r = (x: number) => Math.round(x * 1000) / 1000;
  return { median_ms: r(q(0.5)), p90_ms: r(q(0.9)), n: s.length };
}

const HELPER = String.raw`
import ctypes, json, os, sys, time
libc = ctypes.CDLL("libc.so.6", use_errno=True)
libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
MS_RDONLY = 1
MNT_DETACH = 2
args = json.loads(sys.argv[1])
mnt = args["mnt"]
opts = ("lowerdir=" + ":".join(reversed(args["layers"]))).encode()
def mount():
    if libc.mount(b"overlay", mnt.encode(), b"overlay", MS_RDONLY, opts) != 0:
        e = ctypes.get_errno(); raise OSError(e, os.strerror(e))
def umount():
    if libc.umount2(mnt.encode(), 0) != 0:
        e = ctypes.get_errno(); raise OSError(e, os.strerror(e))
mu = []
for _ in range(args["n_mount"]):
    t = time.perf_counter_ns(); mount(); umount(); mu.append((time.perf_counter_ns() - t) / 1e6)
def run(root, argv):
    t = time.perf_counter_ns()
    pid = os.fork()
    if pid == 0:
        try:
            if root:
                os.chroot(root); os.chdir("/")
            os.execve(argv[0], argv, {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": "/tmp"})
        finally:
            os._exit(127)
    _, st = os.waitpid(pid, 0)
    if st != 0: raise RuntimeError("exit status %d for %r" % (st, argv))
    return (time.perf_counter_ns() - t) / 1e6
mount()
inimg, host = [], []
try:
    run(mnt, ["/usr/local/bin/node", "-e", "0"]); run(None, [args["host_node"], "-e", "0"])  # warm the page cache
    for _ in range(args["n_node"]):
        inimg.append(run(mnt, ["/usr/local/bin/node", "-e", "0"]))
        host.append(run(None, [args["host_node"], "-e", "0"]))
finally:
    libc.umount2(mnt.encode(), MNT_DETACH)
print(json.dumps({"mount_umount": mu, "in_image": inimg, "on_host": host}))
`;

async function main(): Promise<void> {
  const work = mkdtempSync(join(tmpdir(), 'fnhost-bench-images-'));
  try {
    const base = await openImageStore({ stateDir: join(work, 'unused') });
    const sizes: Record<string, number> = {};
    for (const s of (await base.listImages('bench')).filter((i) => i.base)) sizes[s.name] = Math.round((s.sizeBytes / 1e6) * 10) / 10;
    const python = await base.resolve('python');
    const node = await base.resolve('node');

    say('building the 3-layer OCI image (tar + gzip of the python image\'s layers)');
    const layout = join(work, 'layout');
    const tars = python.layers.map((d) => execFileSync('tar', ['--sort=name', '--numeric-owner', '-C', d, '-cf', '-', '.'], { maxBuffer: 1 << 30 }));
    writeOciLayout(layout, tars);

    const cold = await openImageStore({ stateDir: join(work, 'state'), gcGraceMs: 0 });
    let t = performance.now();
    await cold.importImage('bench', 'three', layout);
    const coldMs = performance.now() - t;
    t = performance.now();
    await cold.importImage('bench', 'three-again', layout);
    const warmMs = performance.now() - t;
    say(`import cold ${coldMs.toFixed(0)} ms, warm ${warmMs.toFixed(0)} ms`);

    say('mount/umount x200 and node -e 0 x50 (in image / on host, interleaved)');
    const mnt = join(work, 'mnt');
    execFileSync('mkdir', ['-p', mnt]);
    const r = spawnSync('unshare', ['-m', '--propagation', 'private', '/usr/bin/python3', '-c', HELPER,
      JSON.stringify({ mnt, layers: node.layers, n_mount: 200, n_node: 50, host_node: process.execPath })], { encoding: 'utf8', maxBuffer: 1 << 24 });
    if (r.status !== 0) throw new Error(`helper failed: ${r.stderr}`);
    const m = JSON.parse(r.stdout) as { mount_umount: number[]; in_image: number[]; on_host: number[] };

    const out = {
      import_3layer: { cold_ms: Math.round(coldMs * 10) / 10, warm_ms: Math.round(warmMs * 10) / 10 },
      overlay_mount_umount: stats(m.mount_umount),
      image_size_mb: { busybox: sizes.busybox!, node: sizes.node!, python: sizes.python! },
      node_start: { in_image: stats(m.in_image), on_host: stats(m.on_host) },
    };
    process.stdout.write(`${JSON.stringify(out)}\n`);
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
}

await main();
