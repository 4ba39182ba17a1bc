import { describe, expect, it } from 'vitest';
import { CPR_SYSTEM, Quality } from '../../src/model/measurement.js';
import type { Observation } from '../../src/model/observation.js';
import { republishPayload, topicLevel } from '../../src/sinks/mqtt-republish.js';

const observation: Observation = {
  time: Date.UTC(2026, 10, 21, 9, 0, 0, 250),
  tzOffset: 60,
  deviceId: 'mon-1',
  code: 150456,
  system: 'MDC',
  vendorCode: '150456',
  metric: 'MDC_PULS_OXIM_SAT_O2',
  value: 97,
  text: null,
  unit: '%',
  loinc: '59408-5',
  flags: Quality.QUESTIONABLE,
  containment: '1.1.1.150456',
  patient: { system: CPR_SYSTEM, value: '0101011234' },
  location: 'ICU7/R3/B1',
};

describe('mqtt republish', () => {
  it('carries the reading and never the patient', () => {
    const text = republishPayload(observation);
    expect(text).not.toContain('0101011234');
    expect(text).not.toContain(CPR_SYSTEM);
    expect(JSON.parse(text)).toEqual({
      ts: '2026-11-21T10:00:00.250+01:00',
      value: 97,
      unit: '%',
      metric: 'MDC_PULS_OXIM_SAT_O2',
      mdc: 150456,
      loinc: '59408-5',
      device: 'mon-1',
      quality: ['QUESTIONABLE'],
    });
    expect(JSON.parse(republishPayload({ ...observation, value: NaN, text: 'running' }))).toMatchObject({ value: null, text: 'running' });
  });

  it('makes one topic level of a bed or metric name', () => {
    expect(topicLevel('ICU7/R3/B1')).toBe('ICU7.R3.B1');
    expect(topicLevel('a+b#c\u0000')).toBe('a_b_c_');
    expect(topicLevel('x'.repeat(300))).toHaveLength(128);
  });
});
