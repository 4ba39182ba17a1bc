import { spawn, type ChildProcess } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { PACKAGE_ROOT } from '../../src/paths.js';

export interface ChildGateway {
  child: ChildProcess;
  mllpPort: number;
  httpPort: number;
  /** Every log line the child printed so far. */
  lines: string[];
  /** SIGKILL: no chance to flush or close anything. */
  kill9(): Promise<void>;
  /** SIGTERM: the orderly stop. Resolves with the exit code. */
  terminate(): Promise<number | null>;
}

/**
 * Runs `mdi start` as a real separate process (from the TypeScript sources through tsx),
 * on free ports, and resolves once it logged that it started. Without `extraYaml`, charting
 * is off (no stand-in EPJ on a fixed port).
 */
export async function startChildGateway(dataDir: string, extraYaml = ''): Promise<ChildGateway> {
  const configFile = join(dataDir, 'mdi.yaml');
  writeFileSync(
    configFile,
    `dataDir: ${JSON.stringify(dataDir)}\nhttp: { port: 0, host: 127.0.0.1 }\nmllp: { port: 0, host: 127.0.0.1 }\n${extraYaml || 'fhir: { enabled: false }\n'}`,
  );
  const env: NodeJS.ProcessEnv = { ...process.env };
  // The embedded MQTT broker and the ADT listener stay off unless the config asks for them
  // (they would bind 1883 and 2576 in every test).
  if (!/\bbroker\b/.test(extraYaml)) env.MDI_MQTT_BROKER_ENABLED = 'false';
  if (!/^adt:/m.test(extraYaml)) env.MDI_ADT_ENABLED = 'false';
  // Tests written before the registry talk to the API without a token and chart readings of
  // devices nobody registered; a test about either says so in its config.
  if (!/\bauth\b/.test(extraYaml)) env.MDI_HTTP_AUTH_ENABLED = 'false';
  if (!/^registry:/m.test(extraYaml)) {
    env.MDI_REGISTRY_UNREGISTERED = 'chart';
    // Their fixtures carry fixed reading times: no clock check.
    env.MDI_REGISTRY_CLOCK_DRIFT_LIMIT_SECONDS = '0';
  }
  const child = spawn(process.execPath, ['--import', 'tsx', join(PACKAGE_ROOT, 'src/main.ts'), 'start', '--config', configFile], {
    cwd: PACKAGE_ROOT,
    env,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const lines: string[] = [];
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  let stderr = '';
  child.stderr!.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
  const started = await new Promise<{ http: number; mllp: number }>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`gateway did not start in time; stderr: ${stderr}`)), 20_000);
    void exited.then((code) => reject(new Error(`gateway exited (${code}) before starting; stderr: ${stderr}`)));
    createInterface({ input: child.stdout! }).on('line', (line) => {
      lines.push(line);
      try {
        const entry = JSON.parse(line) as { msg?: string; http?: { port: number }; mllp?: { port: number } };
        if (entry.msg === 'mdi-gateway started' && entry.http && entry.mllp) {
          clearTimeout(timer);
          resolve({ http: entry.http.port, mllp: entry.mllp.port });
        }
      } catch {
        // not a JSON log line
      }
    });
  });
  return {
    child,
    mllpPort: started.mllp,
    httpPort: started.http,
    lines,
    async kill9() {
      child.kill('SIGKILL');
      await exited;
    },
    async terminate() {
      child.kill('SIGTERM');
      return exited;
    },
  };
}
