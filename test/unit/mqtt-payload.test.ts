import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import {
  decodeOptions,
  decodeReadings,
  deviceIdOfReadingsTopic,
  readingsTopic,
  MAX_READINGS_PER_MESSAGE,
} from '../../drivers/mqtt/payload.js';
import { ErrorCode } from '../../src/errors.js';
import { loadMappings } from '../../src/mappings.js';
import { Quality } from '../../src/model/measurement.js';
import { Normalizer } from '../../src/pipeline/normalize.js';

const options = decodeOptions('Europe/Copenhagen', 64 * 1024);
const body = (value: unknown) => Buffer.from(typeof value === 'string' ? value : JSON.stringify(value), 'utf8');
const decode = (value: unknown) => decodeReadings('bed-7-mon', body(value), options);

describe('MQTT topics', () => {
  it('builds and parses the readings topic', () => {
    expect(readingsTopic('bed-7-mon')).toBe('mdi/v1/devices/bed-7-mon/readings');
    expect(deviceIdOfReadingsTopic('mdi/v1/devices/bed-7-mon/readings')).toBe('bed-7-mon');
    expect(deviceIdOfReadingsTopic('mdi/v1/devices/a/b/readings')).toBeNull();
    expect(deviceIdOfReadingsTopic('mdi/v1/devices//readings')).toBeNull();
    expect(deviceIdOfReadingsTopic('mdi/v1/devices/x/commands')).toBeNull();
    expect(deviceIdOfReadingsTopic('other/v1/devices/x/readings')).toBeNull();
  });
});

describe('MQTT payload decoding', () => {
  it('decodes MDC numeric codes, refids, text and null values with the message time', () => {
    const out = decode({
      ts: '2026-11-21T10:00:00.250+01:00',
      id: 'm-1',
      readings: [
        { code: '150456', value: 97, unit: '%' },
        { code: 147842, value: 72, unit: '/min', status: 'questionable' },
        { code: 'MDC_RESP_RATE', value: 14, unit: 'MDC_DIM_RESP_PER_MIN', ts: 1795258800000 },
        { code: '184326', value: 'running', unit: '' },
        { code: '150456', value: null, unit: '%', status: ['demo', 'early'] },
      ],
    });
    expect(out.rejects).toEqual([]);
    expect(out.messageId).toBe('m-1');
    expect(out.measurements).toHaveLength(5);
    const [spo2, hr, rr, text, absent] = out.measurements;
    expect(spo2).toMatchObject({ deviceId: 'bed-7-mon', code: '150456', system: 'MDC', value: 97, unit: '%', tzOffset: 60, flags: 0 });
    expect(spo2!.time).toBe(Date.UTC(2026, 10, 21, 9, 0, 0, 250));
    expect(hr).toMatchObject({ code: '147842', flags: Quality.QUESTIONABLE });
    expect(rr).toMatchObject({ code: '', refid: 'MDC_RESP_RATE', time: 1795258800000, tzOffset: 60 });
    expect(text).toMatchObject({ text: 'running' });
    expect(Number.isNaN(text!.value)).toBe(true);
    expect(absent!.flags).toBe(Quality.INVALID | Quality.DEMO | Quality.EARLY);
    // The same shape as every other driver's Measurements (monomorphic hot path).
    expect(Object.keys(spo2!)).toEqual(Object.keys(hr!));
  });

  it('maps vendor codes through the vendor tables, keeps unknown vendor codes, refuses unknown vendors', () => {
    const out = decode({
      ts: 1795258800000,
      readings: [
        { code: 'masimo:SPO2', value: 98, unit: '' },
        { code: 'masimo:NOT-A-CODE', value: 1, unit: '' },
        { code: 'acme:HR', value: 60, unit: '/min' },
        { code: 'what is this', value: 60, unit: '/min' },
      ],
    });
    expect(out.measurements).toHaveLength(2);
    expect(out.measurements[0]).toMatchObject({ code: '150456', system: 'MDC', refid: 'MDC_PULS_OXIM_SAT_O2', unit: '%' });
    expect(out.measurements[1]).toMatchObject({ code: 'NOT-A-CODE', system: 'MASIMO' });
    expect(out.rejects.map((r) => [r.code, r.location])).toEqual([
      [ErrorCode.MQTT_UNKNOWN_CODE, 'readings[2]'],
      [ErrorCode.MQTT_UNKNOWN_CODE, 'readings[3]'],
    ]);
    expect(out.rejects[0]!.reason).toContain('acme');
  });

  it('normalizes decoded readings like any other driver (MDC → LOINC/UCUM)', () => {
    const normalizer = new Normalizer(loadMappings());
    const out = decode({ ts: 1795258800000, readings: [{ code: 'masimo:SPO2', value: 98, unit: '' }, { code: 'MDC_PULS_OXIM_SAT_O2', value: 97, unit: '%' }] });
    const { observations, rejects } = normalizer.normalizeBatch(out.measurements);
    expect(rejects).toEqual([]);
    expect(observations.map((o) => [o.metric, o.loinc, o.unit])).toEqual([
      ['MDC_PULS_OXIM_SAT_O2', '59408-5', '%'],
      ['MDC_PULS_OXIM_SAT_O2', '59408-5', '%'],
    ]);
  });

  it.each([
    ['truncated JSON', '{"ts":1795258800000,"readings":[{"code":"150456","val', ErrorCode.MQTT_BAD_PAYLOAD],
    ['not an object', '[1,2,3]', ErrorCode.MQTT_BAD_PAYLOAD],
    ['empty', '', ErrorCode.MQTT_BAD_PAYLOAD],
    ['invalid UTF-8 / binary', Buffer.from([0xff, 0xfe, 0x00, 0x01]).toString('latin1'), ErrorCode.MQTT_BAD_PAYLOAD],
    ['no readings', { ts: 1795258800000, readings: [] }, ErrorCode.MQTT_BAD_PAYLOAD],
    ['readings not an array', { ts: 1795258800000, readings: { code: 1 } }, ErrorCode.MQTT_BAD_PAYLOAD],
    ['unknown top-level key', { ts: 1795258800000, readings: [{ code: 1, value: 1, unit: '' }], patient: '0101011234' }, ErrorCode.MQTT_BAD_PAYLOAD],
    ['ts missing', { readings: [{ code: 1, value: 1, unit: '' }] }, ErrorCode.MQTT_BAD_PAYLOAD],
    ['ts without offset', { ts: '2026-11-21T10:00:00', readings: [{ code: 1, value: 1, unit: '' }] }, ErrorCode.MQTT_BAD_PAYLOAD],
    ['ts epoch seconds', { ts: 1795258800, readings: [{ code: 1, value: 1, unit: '' }] }, ErrorCode.MQTT_BAD_TIME],
    ['ts 30 February', { ts: '2026-02-30T10:00:00Z', readings: [{ code: 1, value: 1, unit: '' }] }, ErrorCode.MQTT_BAD_TIME],
    ['ts 1970', { ts: 0, readings: [{ code: 1, value: 1, unit: '' }] }, ErrorCode.MQTT_BAD_TIME],
    ['ts year 3000', { ts: '3000-01-01T00:00:00Z', readings: [{ code: 1, value: 1, unit: '' }] }, ErrorCode.MQTT_BAD_TIME],
    ['ts a float', { ts: 1795258800000.5, readings: [{ code: 1, value: 1, unit: '' }] }, ErrorCode.MQTT_BAD_PAYLOAD],
    ['too many readings', { ts: 1795258800000, readings: Array.from({ length: MAX_READINGS_PER_MESSAGE + 1 }, () => ({ code: 1, value: 1, unit: '' })) }, ErrorCode.MQTT_BAD_PAYLOAD],
  ])('refuses the whole message: %s', (_what, input, code) => {
    const out = decode(input);
    expect(out.measurements).toEqual([]);
    expect(out.rejects).toHaveLength(1);
    expect(out.rejects[0]!.code).toBe(code);
    expect(out.rejects[0]!.reason.length).toBeGreaterThan(0);
  });

  it('refuses a bad reading alone and keeps the others', () => {
    const out = decode({
      ts: 1795258800000,
      id: '7',
      readings: [
        { code: '150456', value: '97', unit: '%', extra: 1 },
        { code: '150456', value: true, unit: '%' },
        { code: '150456', value: 97 },
        { code: '150456', value: 97, unit: '%', ts: 'yesterday' },
        { code: '150456', value: 97, unit: '%', ts: 1 },
        { code: '150456', value: 97, unit: '%', status: 'fine' },
        { code: '0', value: 97, unit: '%' },
        { code: '99999999999', value: 97, unit: '%' },
        'not an object',
        { code: '150456', value: 96, unit: '%' },
      ],
    });
    expect(out.measurements).toHaveLength(1);
    expect(out.measurements[0]!.value).toBe(96);
    expect(out.rejects.map((r) => r.location)).toEqual([
      'readings[0]', 'readings[1]', 'readings[2]', 'readings[3]', 'readings[4]', 'readings[5]', 'readings[6]', 'readings[7]', 'readings[8]',
    ]);
    expect(out.rejects.every((r) => r.controlId === '7')).toBe(true);
    expect(out.rejects[4]!.code).toBe(ErrorCode.MQTT_BAD_TIME);
  });

  it('bounds a huge payload: refused before parsing, with only its head kept', () => {
    const huge = Buffer.alloc(5 * 1024 * 1024, 0x20);
    const out = decodeReadings('d', huge, options);
    expect(out.rejects).toHaveLength(1);
    expect(out.rejects[0]!.code).toBe(ErrorCode.MQTT_PAYLOAD_TOO_LARGE);
    expect(out.rejects[0]!.raw.length).toBeLessThanOrEqual(8 * 1024);
  });

  it('never puts the refused values into the reason (they could be personal data)', () => {
    const out = decode({ ts: 1795258800000, readings: [{ code: '150456', value: 97, unit: '%', note: '0101011234' }] });
    expect(out.rejects[0]!.reason).not.toContain('0101011234');
    const envelope = decode({ ts: '0101011234', readings: [{ code: 1, value: 1, unit: '' }] });
    expect(envelope.rejects[0]!.reason).not.toContain('0101011234');
  });

  it('never throws on random bytes', () => {
    let seed = 42;
    const rnd = () => ((seed = (seed * 1103515245 + 12345) & 0x7fffffff) / 0x7fffffff);
    const valid = body({ ts: 1795258800000, readings: [{ code: '150456', value: 97, unit: '%' }] });
    for (let i = 0; i < 2000; i++) {
      const bytes = Buffer.from(valid);
      for (let k = 0; k < 3; k++) bytes[Math.floor(rnd() * bytes.length)] = Math.floor(rnd() * 256);
      const out = decodeReadings('d', bytes.subarray(0, Math.floor(rnd() * bytes.length) + 1), options);
      expect(out.measurements.length + out.rejects.length).toBeGreaterThan(0);
    }
  });

  it('the JSON Schema file describes the same format', () => {
    const schema = JSON.parse(readFileSync(new URL('../../drivers/mqtt/readings.schema.json', import.meta.url), 'utf8')) as {
      required: string[];
      properties: Record<string, unknown>;
      $defs: { reading: { required: string[]; properties: Record<string, unknown> } };
    };
    expect(schema.required.sort()).toEqual(['readings', 'ts']);
    expect(Object.keys(schema.properties).sort()).toEqual(['id', 'readings', 'ts']);
    expect(schema.$defs.reading.required.sort()).toEqual(['code', 'unit', 'value']);
    expect(Object.keys(schema.$defs.reading.properties).sort()).toEqual(['code', 'status', 'ts', 'unit', 'value']);
  });
});
