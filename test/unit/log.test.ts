import { Writable } from 'node:stream';
import { describe, expect, it } from 'vitest';
import { createLogger, scrubCpr } from '../../src/log.js';

function capture() {
  const lines: string[] = [];
  const destination = new Writable({
    write(chunk, _enc, done) {
      lines.push(String(chunk));
      done();
    },
  });
  return { lines, log: createLogger({ level: 'debug', destination }) };
}

describe('log redaction', () => {
  const cpr = '0101901234';

  it('never writes a CPR number given in a patient field, a message or an error', async () => {
    const { lines, log } = capture();
    log.info({ patient: { system: 'urn:oid:1.2.208.176.1.2', value: cpr } }, 'reading stored');
    log.info({ measurement: { patient: { value: cpr } } }, 'nested');
    log.warn(`unexpected PID-3 ${cpr} in message`);
    log.warn(`with dash 010190-1234 too`);
    log.error({ err: new Error(`lookup failed for ${cpr}`) }, 'failed');
    log.info({ detail: `free text mentioning ${cpr}` }, 'detail');
    await new Promise((r) => setImmediate(r));
    const text = lines.join('');
    expect(lines.length).toBe(6);
    expect(text).not.toContain(cpr);
    expect(text).not.toContain('010190-1234');
    expect(text).toContain('[redacted]');
    expect(text).toContain('******-****');
  });

  it('leaves numbers alone that cannot be a CPR number', () => {
    expect(scrubCpr('control id 20150122182658 and epoch 1763000000')).toBe('control id 20150122182658 and epoch 1763000000');
    expect(scrubCpr('3112991234')).toBe('******-****');
  });
});

describe('logged errors', () => {
  it('keep their type, code and stack (scrubbed)', async () => {
    const { lines, log } = capture();
    const err = Object.assign(new Error('lookup failed for 0101901234'), { code: 'MDI_ERR_STORE_FAILED' });
    log.error({ err }, 'failed');
    await new Promise((r) => setImmediate(r));
    const entry = JSON.parse(lines[0]!) as { err: { type: string; message: string; stack: string; code: string } };
    expect(entry.err.type).toBe('Error');
    expect(entry.err.code).toBe('MDI_ERR_STORE_FAILED');
    expect(entry.err.stack).toContain('log.test.ts');
    expect(entry.err.message).toBe('lookup failed for ******-****');
    expect(lines[0]).not.toContain('0101901234');
  });
});
