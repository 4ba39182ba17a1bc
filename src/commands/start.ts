import { loadConfig } from '../config/load.js';
import { Gateway } from '../gateway.js';
import { createLogger } from '../log.js';

/** `mdi start`: runs until SIGINT/SIGTERM, then stops in order (see gateway.ts). */
export async function runStart(options: { configFile: string | undefined }): Promise<number> {
  const config = loadConfig({ file: options.configFile });
  const log = createLogger({ level: config.log.level });
  const gateway = new Gateway(config, log);
  try {
    await gateway.start();
  } catch (err) {
    log.fatal({ err }, 'mdi-gateway could not start');
    return 1;
  }
  await new Promise<void>((resolve) => {
    let stopping = false;
    const stop = (signal: NodeJS.Signals) => {
      if (stopping) {
        log.warn({ signal }, 'second signal: exiting now');
        process.exit(1);
      }
      stopping = true;
      log.info({ signal }, 'stopping: finishing in-flight messages');
      gateway.stop().then(resolve, (err: unknown) => {
        log.error({ err }, 'error while stopping');
        resolve();
      });
    };
    process.once('SIGINT', stop);
    process.once('SIGTERM', stop);
  });
  log.info('mdi-gateway stopped');
  return 0;
}
