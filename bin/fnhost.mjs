#!/usr/bin/env node
// fnhost command-line entry. Loads the TypeScript CLI through tsx so `npm start` and `npx fnhost` need no build step.
import { register } from 'tsx/esm/api';
register();
const { main } = await import('../services/cli/main.ts');
process.exitCode = await main(process.argv.slice(2));
