import { spawnSync } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { encodeFrame } from '../../src/codec/mllp.js';
import { PACKAGE_ROOT } from '../../src/paths.js';
import { HR_ROW, pcd01Message, SPO2_ROW } from '../helpers/pcd01-message.js';

/** Runs `mdi …` as a user would (a separate process), from the TypeScript sources. */
function mdi(args: string[], input?: Buffer) {
  const result = spawnSync(process.execPath, ['--import', 'tsx', join(PACKAGE_ROOT, 'src/main.ts'), ...args], {
    cwd: PACKAGE_ROOT,
    input,
    encoding: 'utf8',
    timeout: 20_000,
  });
  return { code: result.status, stdout: result.stdout, stderr: result.stderr };
}

const dir = mkdtempSync(join(tmpdir(), 'mdi-cli-'));

describe('mdi command line', () => {
  it('explains itself and every command', () => {
    const main = mdi(['--help']);
    expect(main.code).toBe(0);
    for (const command of ['start', 'check-config', 'inspect', 'simulate', 'epj']) expect(main.stdout).toContain(command);
    for (const command of ['start', 'check-config', 'inspect', 'simulate']) {
      const help = mdi([command, '--help']);
      expect(help.code, command).toBe(0);
      expect(help.stdout, command).toContain(`Usage: mdi ${command}`);
    }
    expect(mdi(['epj', '--help']).stdout).toContain('Usage: mdi epj');
  });

  it('refuses an unknown command or option with exit code 2 and the help', () => {
    const unknown = mdi(['frobnicate']);
    expect(unknown.code).toBe(2);
    expect(unknown.stderr).toContain("unknown command 'frobnicate'");
    const badOption = mdi(['inspect', '--jsn']);
    expect(badOption.code).toBe(2);
    expect(badOption.stderr).toContain('--jsn');
  });

  it('stops a start with a bad config, naming the key', () => {
    const file = join(dir, 'bad.yaml');
    writeFileSync(file, 'mllp:\n  port: seventy\nhttp:\n  prot: 80\n');
    const result = mdi(['start', '--config', file]);
    expect(result.code).toBe(2);
    expect(result.stderr).toContain('mllp.port');
    expect(result.stderr).toContain('http.prot: unknown key');
    expect(result.stderr).toContain('MDI_ERR_CONFIG_INVALID');
  });

  it('check-config prints the effective configuration, secrets masked', () => {
    const file = join(dir, 'secret.yaml');
    writeFileSync(file, 'fhir:\n  baseUrl: https://epj.example/fhir\n  auth: { type: bearer, token: s3cr3t-t0ken }\n');
    const result = mdi(['check-config', '--config', file]);
    expect(result.code).toBe(0);
    expect(JSON.parse(result.stdout)).toMatchObject({ mllp: { port: 2575 }, http: { port: 8080 }, dataDir: './data' });
    expect(result.stdout).not.toContain('s3cr3t-t0ken');
    expect(result.stdout).toContain('"token": "[set]"');
  });

  it('inspect prints a table, and JSON lines with the API fields, from files and stdin', () => {
    const bad: [string, string, string, string, string] = ['151562^MDC_RESP_RATE^MDC', 'NM', 'abc', '264928^MDC_DIM_RESP_PER_MIN^MDC', '1.3.1.1'];
    // Two messages as people export them: LF line ends, one MLLP-framed, one not.
    const exported = Buffer.concat([
      pcd01Message({ controlId: 'INS-1', lineEnd: '\n' }),
      Buffer.from('\n'),
      encodeFrame(pcd01Message({ controlId: 'INS-2', rows: [HR_ROW, bad, SPO2_ROW] })),
    ]);
    const file = join(dir, 'export.hl7');
    writeFileSync(file, exported);

    const table = mdi(['inspect', file]);
    expect(table.code).toBe(1); // one message had a problem
    expect(table.stdout).toContain('MDC_ECG_HEART_RATE');
    expect(table.stdout).toContain('8867-4');
    expect(table.stdout).toMatch(/problem OBX\[3\]-5: .*MDI_ERR_HL7_BAD_VALUE/);
    expect(table.stdout).toContain('2 messages, 4 observations, 1 with problems');

    const json = mdi(['inspect', '--json'], exported);
    const lines = json.stdout.trim().split('\n').map((l) => JSON.parse(l) as Record<string, unknown>);
    const observations = lines.filter((l) => !('problem' in l));
    expect(observations).toHaveLength(4);
    expect(observations[0]).toMatchObject({
      time: '2026-11-21T10:14:55+01:00',
      device: '0012A0FFFE3B7C01',
      code: 147842,
      metric: 'MDC_ECG_HEART_RATE',
      value: 88,
      unit: '/min',
      loinc: '8867-4',
    });
    expect(lines.find((l) => 'problem' in l)).toMatchObject({ code: 'MDI_ERR_HL7_BAD_VALUE', location: 'OBX[3]-5', controlId: 'INS-2' });
    // Patient identity: pseudonym only.
    expect(json.stdout).not.toContain('0101901234');
    expect(json.stdout).not.toContain('Søren');
  });

  it('inspect says clearly when there is no HL7 in the input', () => {
    const result = mdi(['inspect'], Buffer.from('hello\nworld\n'));
    expect(result.code).toBe(1);
    expect(result.stdout).toContain('no HL7 message');
  });

  it('simulate refuses bad options with exit code 2', () => {
    expect(mdi(['simulate', 'pcd01', '--to', 'nowhere']).stderr).toContain('--to must be HOST:PORT');
    expect(mdi(['simulate', 'fax']).code).toBe(2);
    expect(mdi(['simulate', 'pcd01', '--profile', 'toaster']).stderr).toContain('--profile must be one of');
  });
});
