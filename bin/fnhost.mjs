#!/usr/bin/env node
// fnhost command-line entry. Loads the TypeScript CLI through tsx so `npm start` and `npx fnhost` need no build step.
import { setFlagsFromString } from 'node:v8';

// The host (`start`) runs with V8's allocation-site pretenuring off. Pretenuring makes an allocation site allocate
// straight into old space once most of its objects survived scavenges; in a host that happens early, differently per
// process, at per-call sites whose objects live about as long as a call (request and stream state, a job's records),
// which then cost ~80 page faults per 1,000 calls on fresh old-space pages and die in mark-compact instead of in a
// scavenge (perf of traced hosts: ~1.5–2 µs of event-loop CPU per call). `npm run bench:gateway`'s alternating
// segments with 4 hosts pretenuring off vs 4 on (2026-11-30, 20 rounds, paired medians): untraced −3.8 µs of loop per
// warm call (+2.3 % rps at c32), traced −6.5 µs (+3.0 %); idle RSS no higher. V8 reads the flag at every GC, so
// setting it here, before the CLI loads, covers the host's whole life however it is started (`npm start`,
// `fnhost start`, `node bin/fnhost.mjs start`); NODE_OPTIONS does not accept it.
if (process.argv[2] === 'start') setFlagsFromString('--no-allocation-site-pretenuring');

const { register } = await import('tsx/esm/api');
register();
const { main } = await import('../services/cli/main.ts');
process.exitCode = await main(process.argv.slice(2));
