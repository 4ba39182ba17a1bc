/**
 * `mdi devices …`: the device registry of a running gateway, over its HTTP API. Each
 * subcommand is one or two API calls; the gateway validates, audits and answers.
 */
import { readFileSync } from 'node:fs';
import { parseArgs, type ParseArgsConfig } from 'node:util';
import { UsageError } from '../cli.js';
import { call, connection, CONNECTION_HELP, CONNECTION_OPTIONS, readStdin, runCli } from './api-client.js';

type Options = NonNullable<ParseArgsConfig['options']>;

const DEVICE_OPTIONS = {
  kind: { type: 'string' },
  vendor: { type: 'string' },
  model: { type: 'string' },
  'serial-number': { type: 'string' },
  eui64: { type: 'string' },
  ward: { type: 'string' },
  room: { type: 'string' },
  bed: { type: 'string' },
  'expected-interval': { type: 'string' },
  transport: { type: 'string' },
  sender: { type: 'string' },
  'client-id': { type: 'string' },
  username: { type: 'string' },
  'password-hash': { type: 'string' },
  'serial-settings': { type: 'string' },
  input: { type: 'string' },
} as const satisfies Options;

const DEVICE_HELP = `Device fields (add, update, approve):
  --kind K              monitor | pump | ventilator | anesthesia | vital-signs | lab | other
  --vendor V, --model M, --serial-number S
  --eui64 E             EUI-64, 16 hex digits (hyphens or colons allowed)
  --ward W [--room R] [--bed B]
                        bind the device to this bed from now (update: moves it)
  --expected-interval S silent for longer than S seconds raises a 'silent' event
  --transport T         mllp | mqtt | serial, with:
    --sender APP          mllp: MSH-3 of the sender that carries it
    --client-id ID        mqtt: MQTT client id; --username U; --password-hash H
                          (from mdi mqtt-hash-password, never the password)
    --serial-settings J   serial: the serial.devices entry without deviceId, as JSON
                          ('{"protocol":"masimo","port":"/dev/ttyUSB0"}')
  --input FILE          the whole device as JSON (- for stdin); the options above override it`;

const HELP = `Usage: mdi devices <command> [options]

The device registry of a running gateway (over its HTTP API).

Commands:
  list [--status S] [--kind K]      devices as a table (--json: one JSON object per line)
  show ID                           one device and its binding now
  add --id ID --kind K [fields]     register a device
  update ID [fields]                change a device
  approve ID [fields]               approve an unregistered (or retired) device
  retire ID [--reason TEXT]         take a device out of service
  bind ID --ward W [--room R] [--bed B] [--from T] [--to T] [--reason TEXT]
  bind ID --patient-stdin [--from T] [--to T] [--reason TEXT]
                                    bind to a bed, or straight to a patient: stdin has a
                                    CPR number (DDMMYYSSSS) or system|value, so it never
                                    shows in the shell history or the process list
  unbind ID [--at T]                end the device's binding (now, or at T)

Times (T): ISO 8601 (2025-03-01T10:00:00+01:00) or epoch milliseconds.
An ID with a / is fine (it is URL-encoded).

${DEVICE_HELP}

${CONNECTION_HELP}
  --json                print the gateway's JSON answer instead of text
  -h, --help            this help

Examples:
  mdi devices list
  mdi devices add --id mon-icu-3 --kind monitor --vendor Philips --eui64 00-09-FB-FF-FE-01-02-03 --ward ICU --room 1 --bed 3
  mdi devices add --id masimo-7 --kind monitor --transport serial --serial-settings '{"protocol":"masimo","port":"/dev/ttyUSB0"}'
  mdi devices approve 0009FBFFFE0A0B0C --kind pump --vendor "B. Braun"
  mdi devices bind pump-12 --ward ICU --room 1 --bed 3 --reason "moved with the patient"
  echo 0101901234 | mdi devices bind pump-12 --patient-stdin
  mdi devices retire pump-12 --reason "sent for repair"
  MDI_URL=http://gw1:8080 mdi devices list --token-file ~/.mdi-token --json

Exit codes: 0 done, 1 the gateway refused (the reason is printed) or cannot be reached,
2 the command line is wrong.`;

interface DeviceView {
  id: string;
  kind: string;
  status: string;
  location: string | null;
  eui64: string | null;
  vendor: string | null;
  model: string | null;
  serialNumber: string | null;
  transport: { type: string } | null;
  expectedIntervalSeconds: number;
  created: string;
  updated: string;
  binding?: { bed: string | null; patient: { pseudonym: string } | null; from: string } | null;
}

const enc = encodeURIComponent;

export async function runDevicesCli(argv: string[]): Promise<number> {
  return runCli('devices', HELP, async () => {
    const [sub, ...rest] = argv;
    if (sub === undefined || sub === '-h' || sub === '--help' || sub === 'help') {
      process.stdout.write(`${HELP}\n`);
      return sub === undefined ? 2 : 0;
    }
    const extra = ({
      list: { status: { type: 'string' }, kind: { type: 'string' } },
      show: {},
      add: { id: { type: 'string' }, ...DEVICE_OPTIONS },
      update: DEVICE_OPTIONS,
      approve: DEVICE_OPTIONS,
      retire: { reason: { type: 'string' } },
      bind: { ward: { type: 'string' }, room: { type: 'string' }, bed: { type: 'string' }, 'patient-stdin': { type: 'boolean' }, from: { type: 'string' }, to: { type: 'string' }, reason: { type: 'string' } },
      unbind: { at: { type: 'string' } },
    } as Record<string, Options>)[sub];
    if (extra === undefined) throw new UsageError(`unknown command '${sub}'`);
    const { values, positionals } = parseArgs({
      args: rest,
      options: { ...CONNECTION_OPTIONS, ...extra, json: { type: 'boolean' }, help: { type: 'boolean', short: 'h' } },
      allowPositionals: true,
      strict: true,
    });
    if (values.help) {
      process.stdout.write(`${HELP}\n`);
      return 0;
    }
    const v = values as Record<string, string | boolean | undefined>;
    const json = v.json === true;
    const needId = sub !== 'list' && sub !== 'add';
    if (positionals.length !== (needId ? 1 : 0)) {
      throw new UsageError(needId ? `'devices ${sub}' takes one device ID` : `'devices ${sub}' takes no positional arguments (got ${positionals.join(' ')})`);
    }
    const id = positionals[0] ?? '';
    const c = connection(v);

    switch (sub) {
      case 'list': {
        const q = new URLSearchParams();
        if (typeof v.status === 'string') q.set('status', v.status);
        if (typeof v.kind === 'string') q.set('kind', v.kind);
        const { items } = await call<{ items: DeviceView[] }>(c, 'GET', `/api/devices${q.size ? `?${q}` : ''}`);
        if (json) for (const d of items) process.stdout.write(`${JSON.stringify(d)}\n`);
        else process.stdout.write(items.length ? table(items) : 'no devices\n');
        return 0;
      }
      case 'show': {
        const d = await call<DeviceView>(c, 'GET', `/api/devices/${enc(id)}`);
        process.stdout.write(json ? `${JSON.stringify(d, null, 2)}\n` : describeDevice(d));
        return 0;
      }
      case 'add': {
        const body = deviceBody(v);
        if (typeof v.id === 'string') body.id = v.id;
        if (body.id === undefined) throw new UsageError('add needs --id');
        if (body.kind === undefined) throw new UsageError('add needs --kind');
        return printDevice(await call<DeviceView>(c, 'POST', '/api/devices', body), json, 'registered');
      }
      case 'update':
      case 'approve': {
        const body = deviceBody(v);
        if (sub === 'update' && Object.keys(body).length === 0) throw new UsageError('update needs at least one field to change');
        const d = sub === 'update' ? await call<DeviceView>(c, 'PATCH', `/api/devices/${enc(id)}`, body) : await call<DeviceView>(c, 'POST', `/api/devices/${enc(id)}/approve`, body);
        return printDevice(d, json, sub === 'update' ? 'updated' : 'approved');
      }
      case 'retire': {
        const d = await call<DeviceView>(c, 'POST', `/api/devices/${enc(id)}/retire`, typeof v.reason === 'string' ? { reason: v.reason } : {});
        return printDevice(d, json, 'retired');
      }
      case 'bind': {
        const body: Record<string, unknown> = {};
        if (v['patient-stdin'] === true) {
          if (v.ward !== undefined) throw new UsageError('give a bed (--ward …) or --patient-stdin, not both');
          body.patient = parsePatient(await readStdin());
        } else {
          if (typeof v.ward !== 'string') throw new UsageError('bind needs --ward (and --room, --bed) or --patient-stdin');
          body.bed = location(v);
        }
        for (const key of ['from', 'to', 'reason'] as const) if (typeof v[key] === 'string') body[key] = v[key];
        const b = await call<{ id: number; bed: string | null; patient: { pseudonym: string } | null; from: string; to: string | null }>(c, 'POST', `/api/devices/${enc(id)}/bind`, body);
        if (json) process.stdout.write(`${JSON.stringify(b)}\n`);
        else process.stdout.write(`bound ${id} to ${b.bed ?? `patient ${b.patient?.pseudonym ?? '?'}`} from ${b.from}${b.to ? ` to ${b.to}` : ''} (binding ${b.id})\n`);
        return 0;
      }
      case 'unbind': {
        const r = await call<{ ended: { bed: string | null; to: string } | null }>(c, 'POST', `/api/devices/${enc(id)}/unbind`, typeof v.at === 'string' ? { at: v.at } : {});
        if (json) process.stdout.write(`${JSON.stringify(r)}\n`);
        else process.stdout.write(r.ended ? `unbound ${id} (${r.ended.bed ?? 'patient'}) at ${r.ended.to}\n` : `${id} had no open binding\n`);
        return 0;
      }
    }
    return 2;
  });
}

/** A patient from stdin: a CPR number, or `system|value`. */
function parsePatient(text: string): Record<string, string> {
  const t = text.trim();
  if (/^\d{6}-?\d{4}$/.test(t)) return { cpr: t };
  const bar = t.indexOf('|');
  if (bar > 0 && bar < t.length - 1) return { system: t.slice(0, bar), value: t.slice(bar + 1) };
  // Never echo what was read: it may be a mistyped CPR number.
  throw new UsageError('stdin must hold a CPR number (10 digits) or system|value');
}

function location(v: Record<string, string | boolean | undefined>): Record<string, string> {
  const loc: Record<string, string> = { ward: v.ward as string };
  if (typeof v.room === 'string') loc.room = v.room;
  if (typeof v.bed === 'string') loc.bed = v.bed;
  return loc;
}

function deviceBody(v: Record<string, string | boolean | undefined>): Record<string, unknown> {
  let body: Record<string, unknown> = {};
  if (typeof v.input === 'string') {
    const text = v.input === '-' ? readFileSync(0, 'utf8') : readFileSync(v.input, 'utf8');
    try {
      body = JSON.parse(text) as Record<string, unknown>;
    } catch (err) {
      throw new UsageError(`--input: not JSON (${(err as Error).message})`);
    }
  }
  const fields: [string, string][] = [
    ['kind', 'kind'],
    ['vendor', 'vendor'],
    ['model', 'model'],
    ['serial-number', 'serialNumber'],
    ['eui64', 'eui64'],
  ];
  for (const [opt, key] of fields) if (typeof v[opt] === 'string') body[key] = v[opt];
  if (typeof v['expected-interval'] === 'string') {
    const n = Number(v['expected-interval']);
    if (!Number.isInteger(n)) throw new UsageError('--expected-interval must be whole seconds');
    body.expectedIntervalSeconds = n;
  }
  if (typeof v.ward === 'string') body.location = location(v);
  else if (v.room !== undefined || v.bed !== undefined) throw new UsageError('--room and --bed need --ward');
  if (typeof v.transport === 'string') {
    switch (v.transport) {
      case 'mllp':
        body.transport = { type: 'mllp', ...(typeof v.sender === 'string' ? { sender: v.sender } : {}) };
        break;
      case 'mqtt':
        if (typeof v['client-id'] !== 'string') throw new UsageError('--transport mqtt needs --client-id');
        body.transport = {
          type: 'mqtt',
          clientId: v['client-id'],
          ...(typeof v.username === 'string' ? { username: v.username } : {}),
          ...(typeof v['password-hash'] === 'string' ? { passwordHash: v['password-hash'] } : {}),
        };
        break;
      case 'serial': {
        if (typeof v['serial-settings'] !== 'string') throw new UsageError('--transport serial needs --serial-settings JSON');
        let settings: unknown;
        try {
          settings = JSON.parse(v['serial-settings']);
        } catch (err) {
          throw new UsageError(`--serial-settings: not JSON (${(err as Error).message})`);
        }
        body.transport = { type: 'serial', settings };
        break;
      }
      default:
        throw new UsageError(`--transport must be mllp, mqtt or serial, got '${v.transport}'`);
    }
  }
  return body;
}

function printDevice(d: DeviceView, json: boolean, verb: string): number {
  process.stdout.write(json ? `${JSON.stringify(d)}\n` : `${verb} ${d.id}\n${describeDevice(d)}`);
  return 0;
}

function describeDevice(d: DeviceView): string {
  const rows: [string, string][] = [
    ['id', d.id],
    ['kind', d.kind],
    ['status', d.status],
    ['location', d.location ?? '-'],
    ['eui64', d.eui64 ?? '-'],
    ['vendor', d.vendor ?? '-'],
    ['model', d.model ?? '-'],
    ['serial number', d.serialNumber ?? '-'],
    ['transport', d.transport ? JSON.stringify(d.transport) : '-'],
    ['expected every', `${d.expectedIntervalSeconds} s`],
    ['created', d.created],
    ['updated', d.updated],
  ];
  if (d.binding !== undefined) {
    rows.push(['bound now', d.binding ? `${d.binding.bed ?? `patient ${d.binding.patient?.pseudonym ?? '?'}`} since ${d.binding.from}` : '-']);
  }
  return rows.map(([k, val]) => `  ${k.padEnd(15)}${val}\n`).join('');
}

function table(items: DeviceView[]): string {
  const head = ['ID', 'KIND', 'STATUS', 'LOCATION', 'EUI-64', 'VENDOR / MODEL', 'TRANSPORT'];
  const rows = items.map((d) => [
    d.id,
    d.kind,
    d.status,
    d.location ?? '-',
    d.eui64 ?? '-',
    [d.vendor, d.model].filter(Boolean).join(' ') || '-',
    d.transport?.type ?? '-',
  ]);
  const widths = head.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)));
  const line = (cells: string[]) => `${cells.map((c, i) => c.padEnd(widths[i]!)).join('  ').trimEnd()}\n`;
  return line(head) + rows.map(line).join('');
}
