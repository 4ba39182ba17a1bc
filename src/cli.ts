import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { parseArgs, type ParseArgsConfig } from 'node:util';
import { loadConfig } from './config/load.js';
import { GatewayError } from './errors.js';
import { PACKAGE_ROOT } from './paths.js';

/**
 * `mdi`: the command line. Each subcommand has its own `--help`. Exit codes: 0 success,
 * 1 the work failed (input had problems, a run failed), 2 the command line or config is wrong.
 */

interface Command {
  readonly summary: string;
  /** The command parses its own arguments (and prints its own --help). */
  readonly passthrough?: (argv: string[]) => Promise<number>;
  readonly help: string;
  readonly options: NonNullable<ParseArgsConfig['options']>;
  readonly allowPositionals: boolean;
  run(values: Record<string, unknown>, positionals: string[]): Promise<number>;
}

const CONFIG_HELP = `Configuration: a YAML file (--config), then MDI_* environment variables (MDI_HTTP_PORT,
MDI_MLLP_PORT, MDI_DATA_DIR, MDI_LOG_LEVEL, …: the key path in upper snake case). Without a
file the embedded defaults apply: SQLite store in ./data, MLLP on 2575, HTTP API on 8080.
See mdi.example.yaml for every key with its default.`;

const commands: Record<string, Command> = {
  start: {
    summary: 'run the gateway',
    help: `Usage: mdi start [--config FILE]

Runs the gateway: the MLLP listener for IHE PCD-01 (HL7 v2 ORU^R01), the SQLite store and the
HTTP API (GET /health, /api/observations, /api/dead-letters, /api/status). Stops cleanly on
SIGINT/SIGTERM: every message already received is committed and acknowledged first.

Options:
  -c, --config FILE   YAML configuration (validated at start; a bad key names itself)
  -h, --help          this help

${CONFIG_HELP}`,
    options: { config: { type: 'string', short: 'c' } },
    allowPositionals: false,
    async run(values) {
      const { runStart } = await import('./commands/start.js');
      return runStart({ configFile: values.config as string | undefined });
    },
  },
  'check-config': {
    summary: 'validate a configuration file and print the result',
    help: `Usage: mdi check-config [--config FILE]

Validates the configuration (file, then MDI_* environment) exactly as 'mdi start' would and
prints the effective settings as JSON, with secrets (tokens, client secrets, password hashes)
shown as "[set]". Exit code 2 and the offending key when it is invalid.

Options:
  -c, --config FILE   YAML configuration
  -h, --help          this help

${CONFIG_HELP}`,
    options: { config: { type: 'string', short: 'c' } },
    allowPositionals: false,
    async run(values) {
      const config = loadConfig({ file: values.config as string | undefined });
      // Secrets (bearer tokens, client secrets, password hashes) are shown as set, not as values.
      const masked = JSON.stringify(config, (key, value: unknown) =>
        /token$|secret|password/i.test(key) && typeof value === 'string' && !/File$/.test(key) ? '[set]' : value,
      2);
      process.stdout.write(`${masked}\n`);
      return 0;
    },
  },
  inspect: {
    summary: 'decode PCD-01 messages or serial captures and show the readings and problems',
    help: `Usage: mdi inspect [FILE...] [--protocol P] [--hex] [--json] [--timezone ZONE]

Decodes HL7 v2 IHE PCD-01 messages as people export them (one or many per file; segments
ended by \\r, \\n or \\r\\n; MLLP-framed or not) and prints the normalized observations and
every problem with its segment/field location (for example OBX[4]-5). Reads stdin when no
file is given. Patient identity is never printed in clear.

With --protocol masimo|medibus|bbraun it decodes a serial capture instead (the bytes a Masimo
Radical-7/Rad-8 "ASCII 1" line, a Dräger MEDIBUS link or a B. Braun SpaceCom BCC link carried)
with the gateway's own framers and decoders, and names each problem by its byte range. A value
the device marks absent or invalid (Masimo "---", SpO2=000 with a sensor-off exception) is
shown without a number and flagged INVALID.

Options:
  --protocol P        pcd01 (default) | masimo | medibus | bbraun
  --hex               the input is a hex dump (pairs of hex digits; spaces, commas, colons
                      and 0x ignored; # starts a comment), not raw bytes
  --json              one JSON object per line: observations (the same fields as an
                      /api/observations item) and problems ({"problem": …})
  --timezone ZONE     zone for device times without a UTC offset (default Europe/Copenhagen)
  -h, --help          this help

Exit code 0 when every input decoded without problems, 1 when any had problems.`,
    options: { json: { type: 'boolean' }, timezone: { type: 'string' }, protocol: { type: 'string' }, hex: { type: 'boolean' } },
    allowPositionals: true,
    async run(values, positionals) {
      const { runInspect } = await import('./commands/inspect.js');
      const protocol = (values.protocol as string | undefined) ?? 'pcd01';
      if (!['pcd01', 'masimo', 'medibus', 'bbraun'].includes(protocol)) {
        throw new UsageError(`--protocol must be pcd01, masimo, medibus or bbraun, got '${protocol}'`);
      }
      return runInspect({
        files: positionals,
        json: values.json === true,
        timezone: (values.timezone as string | undefined) ?? 'Europe/Copenhagen',
        protocol: protocol as 'pcd01' | 'masimo' | 'medibus' | 'bbraun',
        hex: values.hex === true,
      });
    },
  },
  simulate: {
    summary: 'play simulated devices against a gateway (pcd01, masimo, medibus, bbraun, mqtt, adt)',
    help: `Usage: mdi simulate pcd01 --to HOST:PORT [options]
       mdi simulate masimo|medibus|bbraun [--port PATH | --tcp-port N] [options]
       mdi simulate mqtt --to mqtt://HOST:PORT --devices N --rate R [options]
       mdi simulate adt --to HOST:PORT --beds ICU/1/1,ICU/1/2 [options]

Plays patient monitors and infusion pumps that send IHE PCD-01 over MLLP, with plausible,
slowly drifting values, and reports ACKs (AA/AE/AR), rate and ACK latency (p50/p95/p99).

Options:
  --to HOST:PORT      the gateway's MLLP listener (default 127.0.0.1:2575)
  --devices N         simulated devices, one connection each (default 10)
  --rate R            messages per second per device; 0 = as fast as ACKs allow (default 1)
  --window W          unacknowledged messages per connection (default 1, like real devices)
  --count C           stop after C messages in total
  --duration S        stop after S seconds (default: until Ctrl-C when no --count)
  --profile P         monitor | pump | mixed | obx20 (default mixed)
  --faults LIST       comma list of faults to inject now and then: bad-value, garbage,
                      truncated, oversize, wrong-charset, unknown-code
  --fault-rate F      fraction of messages with a fault (default 0.01 when --faults is set)
  --charset C         utf8 | latin1 (default utf8)
  --seed S            seed for reproducible traffic
  -h, --help          this help

Serial devices (masimo: Radical-7 ASCII 1; medibus: Dräger ventilator; bbraun: SpaceCom BCC):
  --port PATH         the device's end of a serial line (e.g. /dev/pts/4 of a socat pair);
                      without it a socat pty pair is made and the gateway's end is printed
  --tcp-port N        bbraun only: listen for the gateway on TCP port N (the ComDevice's 4001)
  --faults LIST       garbage, bad-checksum, truncated, huge, pause, unplug
  --fault-rate F      fraction of frames with a fault (default 0.05 when --faults is set)
  --pause-ms MS       length of a pause fault (default 4000: longer than the MEDIBUS keep-alive)
  --unplug-ms MS      length of a pulled cable (default 3000)
  --interval-ms MS    masimo: time between lines (default 1000)
  --duration S        stop after S seconds (default: until Ctrl-C)
  --seed S            seed for reproducible values

MQTT devices (topic mdi/v1/devices/<id>/readings, QoS 1, one message in flight per device):
  --to URL            the broker: the gateway's embedded one or an external one
                      (default mqtt://127.0.0.1:1883)
  --devices N         devices <prefix>-1 … <prefix>-N, one connection each (default 10)
  --rate R            messages per second per device; 0 = as fast as PUBACKs come (default 1)
  --count C, --duration S, --seed S   as above
  --secret S          fleet secret the device passwords derive from (default: $MDI_SIM_SECRET
                      or "mdi-simulator"); the same secret in --print-config and the run
  --prefix P          device id prefix (default sim-mon)
  --print-config      print the mqtt.broker block (scrypt hashes) for the gateway, then exit
  --no-auth           connect without user name and password (an open external broker)
  --faults bad-json   send some messages truncated (--fault-rate, default 0.01)

ADT feed of a ward (HL7 v2 ADT A01/A02/A03/A04/A08, cancels A11/A12/A13) over MLLP:
  --to HOST:PORT      the gateway's ADT listener (default 127.0.0.1:2576)
  --beds LIST         comma list of bed keys ward/room/bed (default ICU/1/1,ICU/1/2,ICU/2/1,ICU/2/2)
  --patients N        synthetic patients (fake CPR numbers born 1900…; default 2 per bed)
  --rate R            ADT messages per second, one in flight (default 1)
  --transfer-every S  mean seconds between transfers (default 600; 0 = none)
  --cancels           now and then cancel the admit/transfer/discharge just sent
  --count C, --duration S, --seed S, --charset C   as above`,
    options: {
      to: { type: 'string' },
      devices: { type: 'string' },
      rate: { type: 'string' },
      window: { type: 'string' },
      count: { type: 'string' },
      duration: { type: 'string' },
      profile: { type: 'string' },
      faults: { type: 'string' },
      'fault-rate': { type: 'string' },
      charset: { type: 'string' },
      seed: { type: 'string' },
      port: { type: 'string' },
      'tcp-port': { type: 'string' },
      'pause-ms': { type: 'string' },
      'unplug-ms': { type: 'string' },
      'interval-ms': { type: 'string' },
      secret: { type: 'string' },
      prefix: { type: 'string' },
      'print-config': { type: 'boolean' },
      'no-auth': { type: 'boolean' },
      beds: { type: 'string' },
      patients: { type: 'string' },
      'transfer-every': { type: 'string' },
      cancels: { type: 'boolean' },
    },
    allowPositionals: true,
    async run(values, positionals) {
      const { runSimulate } = await import('./commands/simulate.js');
      return runSimulate(positionals, values);
    },
  },
};

commands['mqtt-hash-password'] = {
  summary: 'hash a device password for mqtt.broker.devices (reads it from stdin)',
  help: `Usage: mdi mqtt-hash-password < password-file
       echo -n 'secret' | mdi mqtt-hash-password

Prints the scrypt hash of the password read from stdin (one line; a trailing newline is
dropped), for passwordHash in mqtt.broker.devices. The password is read from stdin, not from
the command line, so it does not end up in the shell history or the process list.

Options:
  -h, --help          this help`,
  options: {},
  allowPositionals: false,
  async run() {
    const chunks: Buffer[] = [];
    let size = 0;
    for await (const chunk of process.stdin) {
      size += (chunk as Buffer).length;
      if (size > 4096) throw new UsageError('the password is longer than 4096 bytes');
      chunks.push(chunk as Buffer);
    }
    const password = Buffer.concat(chunks).toString('utf8').replace(/\r?\n$/, '');
    if (password.length === 0) throw new UsageError('no password on stdin');
    const { driverFactories } = await import('./drivers.js');
    process.stdout.write(`${await driverFactories.mqttBroker.hashSecret(password)}\n`);
    return 0;
  },
};

commands['serial-ports'] = {
  summary: 'list the serial ports of this machine (works without udev)',
  help: `Usage: mdi serial-ports [--json]

Lists serial ports with what the system knows about them (USB vendor/product, serial number,
/dev/serial/by-id names). Uses udev where it is installed, and scans /dev otherwise.

Options:
  --json              one JSON object per port
  -h, --help          this help`,
  options: { json: { type: 'boolean' } },
  allowPositionals: false,
  async run(values) {
    const { driverFactories } = await import('./drivers.js');
    const ports = await driverFactories.serial.listPorts();
    for (const p of ports) {
      if (values.json === true) process.stdout.write(`${JSON.stringify(p)}\n`);
      else process.stdout.write(`${[p.path, p.manufacturer, p.serialNumber, ...(p.byId ?? [])].filter(Boolean).join('  ')}\n`);
    }
    if (ports.length === 0 && values.json !== true) process.stdout.write('no serial ports found\n');
    return 0;
  },
};

commands.epj = {
  summary: 'run the EPJ stand-in: a validating FHIR R4 server with fault injection',
  help: '',
  options: {},
  allowPositionals: false,
  passthrough: async (argv) => {
    const { runEpjCli } = await import('../simulators/epj/index.js');
    return runEpjCli(argv);
  },
  run: async () => 2,
};

commands.devices = {
  summary: 'the device registry of a running gateway: list, add, update, approve, retire, bind',
  help: '',
  options: {},
  allowPositionals: false,
  passthrough: async (argv) => {
    const { runDevicesCli } = await import('./commands/devices.js');
    return runDevicesCli(argv);
  },
  run: async () => 2,
};

commands.token = {
  summary: 'API tokens: make one (and its hash for the config), hash, list, revoke',
  help: '',
  options: {},
  allowPositionals: false,
  passthrough: async (argv) => {
    const { runTokenCli } = await import('./commands/token.js');
    return runTokenCli(argv);
  },
  run: async () => 2,
};

const MAIN_HELP = `mdi-gateway — Medical Device Integration gateway (IHE PCD-01/MLLP → IEEE 11073 / LOINC / UCUM)

Usage: mdi <command> [options]

Commands:
${Object.entries(commands)
  .map(([name, c]) => `  ${name.padEnd(14)}${c.summary}`)
  .join('\n')}

Run 'mdi <command> --help' for a command's options.
  -h, --help       this help
  -v, --version    the version`;

export async function main(argv: string[]): Promise<number> {
  const [name, ...rest] = argv;
  if (name === undefined || name === '-h' || name === '--help' || name === 'help') {
    process.stdout.write(`${MAIN_HELP}\n`);
    return name === undefined ? 2 : 0;
  }
  if (name === '-v' || name === '--version') {
    const pkg = JSON.parse(readFileSync(join(PACKAGE_ROOT, 'package.json'), 'utf8')) as { version: string };
    process.stdout.write(`${pkg.version}\n`);
    return 0;
  }
  const command = commands[name];
  if (!command) {
    process.stderr.write(`mdi: unknown command '${name}'\n\n${MAIN_HELP}\n`);
    return 2;
  }
  if (command.passthrough) return command.passthrough(rest);
  let parsed: { values: Record<string, unknown>; positionals: string[] };
  try {
    parsed = parseArgs({
      args: rest,
      options: { ...command.options, help: { type: 'boolean', short: 'h' } },
      allowPositionals: command.allowPositionals,
      strict: true,
    });
  } catch (err) {
    process.stderr.write(`mdi ${name}: ${(err as Error).message}\n\n${command.help}\n`);
    return 2;
  }
  if (parsed.values.help) {
    process.stdout.write(`${command.help}\n`);
    return 0;
  }
  try {
    return await command.run(parsed.values, parsed.positionals);
  } catch (err) {
    if (err instanceof GatewayError) {
      process.stderr.write(`mdi ${name}: ${err.message} [${err.code}]\n`);
      return 2;
    }
    if (err instanceof UsageError) {
      process.stderr.write(`mdi ${name}: ${err.message}\n\n${command.help}\n`);
      return 2;
    }
    throw err;
  }
}

/** A command line that cannot be used; printed with the command's help, exit code 2. */
export class UsageError extends Error {}
