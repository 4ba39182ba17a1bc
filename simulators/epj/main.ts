/**
 * Stand-alone entry point until the stand-in is mounted as `mdi epj`:
 * `npx tsx simulators/epj/main.ts --port 8090 --throttle 5`.
 */
import { runEpjCli } from './cli.js';

process.exitCode = await runEpjCli(process.argv.slice(2));
