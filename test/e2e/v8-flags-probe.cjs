// Preloaded with `node --require` by host-v8-flags.test.ts: reports every v8.setFlagsFromString() call on stderr as
// "v8flag: <flags>", then makes the call. syncBuiltinESMExports() carries the wrapper into `import … from 'node:v8'`.
const v8 = require('node:v8');
const set = v8.setFlagsFromString;
v8.setFlagsFromString = (flags) => {
  process.stderr.write(`v8flag: ${flags}\n`);
  return set(flags);
};
require('node:module').syncBuiltinESMExports();
