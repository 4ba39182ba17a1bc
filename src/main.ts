#!/usr/bin/env node
// The `mdi` executable: everything lives in cli.ts so tests can call main() in-process.
import { main } from './cli.js';

main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
  },
  (err: unknown) => {
    process.stderr.write(`mdi: ${(err as Error).stack ?? String(err)}\n`);
    process.exitCode = 1;
  },
);
