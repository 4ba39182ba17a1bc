/**
 * `mdi inspect --protocol masimo|medibus|bbraun [--hex]`, `mdi simulate masimo|medibus|bbraun`
 * and `mdi serial-ports`: in-process through runInspect for the many cases, and as a real
 * process for the command-line wiring.
 */
import { spawnSync } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { runInspect } from '../../src/commands/inspect.js';
import { PACKAGE_ROOT } from '../../src/paths.js';
import { bccFrame } from '../../simulators/bbraun.js';
import { masimoLine } from '../../simulators/masimo.js';
import { medibusCorpusPath } from '../helpers/serial-corpus.js';
import { sharedPath, SHARED_ABSENT_NOTE } from '../helpers/shared.js';
import { SOCAT_AVAILABLE } from '../helpers/socat.js';

const dir = mkdtempSync(join(tmpdir(), 'mdi-serial-cli-'));

async function inspect(protocol: 'masimo' | 'medibus' | 'bbraun', files: string[], extra: { json?: boolean; hex?: boolean } = {}) {
  let out = '';
  const code = await runInspect({ files, json: extra.json ?? true, hex: extra.hex ?? false, timezone: 'Europe/Copenhagen', protocol, write: (t) => (out += t) });
  const lines = out.split('\n').filter(Boolean);
  return { code, out, json: extra.json === false ? [] : lines.map((l) => JSON.parse(l) as Record<string, unknown>) };
}

function mdi(args: string[]) {
  const result = spawnSync(process.execPath, ['--import', 'tsx', join(PACKAGE_ROOT, 'src/main.ts'), ...args], { cwd: PACKAGE_ROOT, encoding: 'utf8', timeout: 20_000 });
  return { code: result.status, stdout: result.stdout, stderr: result.stderr };
}

describe('mdi inspect --protocol', () => {
  it('prints Masimo readings as API items; invalid values have no number', async () => {
    const file = join(dir, 'masimo.txt');
    const t = Date.UTC(2026, 2, 1, 9);
    writeFileSync(
      file,
      masimoLine(t, { spo2: 97, bpm: 64, pi: 2.4, sphb: 13.1, spmet: 1.1, pvi: 12, exc: 0x800 }) +
        masimoLine(t + 1000, { spo2: Number.NaN, bpm: Number.NaN, pi: Number.NaN, sphb: Number.NaN, spmet: 1.1, pvi: Number.NaN, exc: 0x820 }),
    );
    const { code, json } = await inspect('masimo', [file]);
    expect(code).toBe(0);
    const spo2 = json.filter((i) => i.code === 150456);
    expect(spo2).toHaveLength(2);
    expect(spo2[0]).toMatchObject({ time: '2026-03-01T10:00:00+01:00', value: 97, unit: '%', loinc: '59408-5', flags: [] });
    expect(spo2[1]).toMatchObject({ value: null, flags: ['INVALID'] });
    expect(Object.keys(spo2[0]!)).toEqual(['time', 'device', 'code', 'metric', 'value', 'unit', 'loinc', 'text', 'system', 'vendorCode', 'flags', 'containment', 'location', 'patient']);
  });

  it('reports every refused line with its byte location and exits 1', async () => {
    const file = join(dir, 'masimo-bad.txt');
    writeFileSync(file, 'garbage\r\n03/01/26 10:00:00 SPO2=097% EXC=000800\r\n03/01/26 10:00:01 SPO2=09', 'latin1');
    const { code, json } = await inspect('masimo', [file]);
    expect(code).toBe(1);
    const problems = json.filter((i) => 'problem' in i);
    expect(problems.map((p) => [p.code, p.location])).toEqual([
      ['MDI_ERR_MASIMO_BAD_LINE', 'line at byte 0'],
      ['MDI_ERR_MASIMO_BAD_LINE', 'bytes 49-73'], // the capture ends inside a line
    ]);
    expect(json.filter((i) => i.code === 150456).map((i) => i.value)).toEqual([97]);
  });

  it.skipIf(!medibusCorpusPath())(`decodes the MEDIBUS specification's hex frames with --hex (${medibusCorpusPath() ? 'public corpus' : SHARED_ABSENT_NOTE})`, async () => {
    const { code, json } = await inspect('medibus', [medibusCorpusPath()!], { hex: true });
    expect(code).toBe(0);
    expect(json.map((i) => [i.metric, i.value])).toEqual([
      ['MDC_PULS_OXIM_SAT_O2', 98],
      ['MDC_PULS_OXIM_PULS_RATE', 70],
    ]);
  });

  it('reads a stuffed BCC capture, one device per pump', async () => {
    const file = join(dir, 'bcc.bin');
    writeFileSync(file, Buffer.concat([bccFrame('ComSystem/1/1', 'MEM:GET'), bccFrame('ComSystem/1/1', '12,50113,INRT,2.5\x1e12,50113,INSOL,Dobutamin', { final: true })]));
    const { code, json, out } = await inspect('bbraun', [file]);
    expect(code, out).toBe(0);
    expect(json.map((i) => [i.device, i.metric, i.value ?? i.text])).toEqual([
      ['capture-bbraun/pump-13', 'MDC_FLOW_FLUID_PUMP', 2.5],
      ['capture-bbraun/pump-13', 'MDC_DRUG_NAME_LABEL', 'Dobutamin'],
    ]);
  });

  it.skipIf(!sharedPath('corpus/public/bbraun-bcc-spec-v4-telegram-examples.txt'))('refuses the BCC examples whose checks were edited, each with its numbers', async () => {
    const { bccCorpusTelegrams } = await import('../helpers/serial-corpus.js');
    const file = join(dir, 'bcc-spec.bin');
    writeFileSync(file, Buffer.concat(bccCorpusTelegrams()!.map((t) => t.bytes)));
    const { code, out } = await inspect('bbraun', [file], { json: false });
    expect(code).toBe(1);
    expect(out).toMatch(/read without BCC character stuffing/);
    expect(out).toMatch(/length field 00044 but the frame has 45 bytes/);
    expect(out.match(/MDI_ERR_BCC_BAD_(LENGTH|CHECKSUM)/g)).toHaveLength(7);
  });
});

describe('mdi command line: serial', () => {
  it('inspect --protocol --hex --json, an unknown protocol, and serial-ports work as commands', () => {
    const file = join(dir, 'medibus.hex');
    writeFileSync(file, '# SpO2 98, pulse 70 (MEDIBUS definition, example 2)\n01 24 45 42 20 39 38 20 45 31 20 37 30 20 37 41 0D\n');
    const ok = mdi(['inspect', '--protocol', 'medibus', '--hex', '--json', file]);
    expect(ok.code, ok.stderr).toBe(0);
    expect(ok.stdout.trim().split('\n').map((l) => (JSON.parse(l) as { value: number }).value)).toEqual([98, 70]);
    const bad = mdi(['inspect', '--protocol', 'nonin', file]);
    expect(bad.code).toBe(2);
    expect(bad.stderr).toContain("--protocol must be pcd01, masimo, medibus or bbraun, got 'nonin'");
    const ports = mdi(['serial-ports', '--json']);
    expect(ports.code).toBe(0);
    for (const line of ports.stdout.split('\n').filter(Boolean)) expect(JSON.parse(line)).toHaveProperty('path');
  });

  it.skipIf(!SOCAT_AVAILABLE)('simulate masimo makes a pty pair, names the gateway end, and reports what it sent', () => {
    const run = mdi(['simulate', 'masimo', '--duration', '1', '--interval-ms', '100', '--seed', '3']);
    expect(run.code, run.stderr).toBe(0);
    expect(run.stdout).toMatch(/give the gateway this port: \/\S+\/gateway/);
    expect(run.stdout).toMatch(/masimo: \d+ frames/);
    expect(mdi(['simulate', 'medibus', '--to', 'h:1']).stderr).toContain('--to is for pcd01');
  });
});
