/**
 * The EPJ stand-in: a small, validating FHIR R4 server that the gateway forwards Observations to
 * in tests and on embedded defaults, standing in for a Danish hospital's patient record (EPJ).
 *
 * ```ts
 * const epj = await startEpj({ port: 0 });
 * // POST `${epj.url}/Observation` …
 * await epj.setFaults({ throttle: 5 });   // every request: 429, Retry-After: 5
 * await epj.setFaults({ down: true });    // connections refused until down: false
 * epj.stats().duplicatesAvoided;
 * await epj.close();
 * ```
 */
export { startEpj } from './server.js';
export type { EpjOptions, EpjServer } from './server.js';
export { EpjFaultsSchema, NO_FAULTS } from './faults.js';
export type { EpjFaults, EpjFaultsInput } from './faults.js';
export type { EpjStats } from './stats.js';
export {
  EPJ_CLI_HELP,
  EPJ_DEFAULT_PORT,
  EpjCliUsageError,
  parseEpjCliArgs,
  runEpjCli,
  runEpjFromFlags,
} from './cli.js';
export type { EpjCliIo, EpjCliOptions } from './cli.js';
export { loadValidator, VITALSIGNS_PROFILE } from './validation.js';
export type { EpjValidator, ValidationVerdict } from './validation.js';
