import { describe, expect, it } from 'vitest';
import {
  bccPumpDeviceId,
  bccSlot,
  decodeBccBlock,
  parseBccRecords,
  parseBccRequest,
} from '../../drivers/serial/bbraun.js';
import { vendorCodesFor } from '../../drivers/serial/index.js';
import { zoneOffsets } from '../../src/codec/hl7-time.js';
import { ErrorCode } from '../../src/errors.js';
import { Quality, type Measurement } from '../../src/model/measurement.js';
import { bccFrame } from '../../simulators/bbraun.js';
import { BccFramer, type BccFrame } from '../../drivers/serial/framers.js';
import { bccCorpusTelegrams } from '../helpers/serial-corpus.js';
import { SHARED_ABSENT_NOTE } from '../helpers/shared.js';

const received = Date.UTC(2026, 0, 1, 12, 0, 0);
const ctx = { deviceId: 'spacecom-7', received, zone: zoneOffsets('Europe/Copenhagen'), codes: vendorCodesFor('bbraun') };
const RS = '\x1e';
const find = (ms: Measurement[], device: string, code: string) => ms.find((m) => m.deviceId === device && (m.code === code || m.refid === code));

/** The information part of a corpus telegram (between `>` and ETX/ETB), whatever its checks say. */
function infoOf(bytes: Buffer): Buffer {
  const gt = bytes.indexOf(0x3e);
  let end = bytes.length - 1;
  while (end > gt && bytes[end] !== 0x03 && bytes[end] !== 0x17) end--;
  return bytes.subarray(gt + 1, end);
}

describe('BCC records: the specification examples', () => {
  const corpus = bccCorpusTelegrams();
  const note = corpus ? 'public corpus' : SHARED_ABSENT_NOTE;

  it.skipIf(!corpus)(`reads the MEM:GET blocks record by record, though their checks were edited (${note})`, () => {
    // SOURCES.md: use the ComSystem frames for layout, not for checks.
    const blocks = corpus!.filter((t) => t.direction === 'IN' && t.bytes.length > 200).map((t) => infoOf(t.bytes));
    expect(blocks).toHaveLength(3);
    for (const info of blocks) expect(parseBccRecords(info).problems).toEqual([]);
    const d = decodeBccBlock(blocks[1]!, ctx);
    expect(d.problems).toEqual([]);
    const pump = 'spacecom-7/pump-13';
    expect(find(d.readings, pump, 'MDC_FLOW_FLUID_PUMP')).toMatchObject({ value: 0.3, unit: 'mL/h', system: 'MDC', code: '157784' });
    expect(find(d.readings, pump, 'MDC_DRUG_NAME_LABEL')!.text).toBe('Arterenol4mg/50');
    expect(find(d.readings, pump, 'INSOLSN')!.text).toBe('Arteren\ue021'); // the pump's display glyph, U+E021
    expect(find(d.readings, pump, 'INVOLACT')).toMatchObject({ value: 47.64, unit: 'mL', system: 'BBRAUN-BCC' });
    expect(find(d.readings, pump, 'MDC_VOL_SYRINGE')!.value).toBe(50);
    expect(find(d.readings, pump, 'MDC_VOL_FLUID_DELIV_TOTAL')!.value).toBe(1.4);
    // INRMT 65535: no end time; never stored as 65535 minutes.
    const remain = find(d.readings, pump, 'MDC_TIME_PD_REMAIN')!;
    expect(Number.isNaN(remain.value)).toBe(true);
    expect(remain.flags).toBe(Quality.INVALID);
    expect(find(d.states, pump, 'MDC_PUMP_INFUSING_STATUS')).toMatchObject({ value: 1, text: 'pump-status-infusing' });
    expect(find(d.states, pump, 'MDC_ATTR_POWER_STAT')!.text).toBe('onMains');
    expect(find(d.states, pump, 'MDC_EVT_FLUID_LINE_OCCL')).toMatchObject({ value: 0, text: 'inactive', flags: 0 });
    expect(find(d.states, pump, 'INM4')).toBeUndefined(); // _NV: no state to store
    expect(d.identity).toMatchObject({ 'pump-13 INSERNUM': '40864', 'pump-13 INNR': '60009FA0' });
    // The first block carries the ComDevice itself (50100) and the pump in slot 11.
    const first = decodeBccBlock(blocks[0]!, ctx);
    expect(find(first.states, 'spacecom-7', 'FMSTAT')).toMatchObject({ system: 'BBRAUN-BCC', text: '00051' });
    expect(find(first.readings, 'spacecom-7/pump-11', 'MDC_FLOW_FLUID_PUMP')!.value).toBe(0);
  });

  it.skipIf(!corpus)(`reads the ALIVE and VERSION answers (${note})`, () => {
    const answers = corpus!.filter((t) => t.direction === 'IN' && t.bytes.length < 100).map((t) => decodeBccBlock(infoOf(t.bytes), ctx));
    expect(answers[0]!.aliveAck).toBe(true);
    expect(answers[1]!.identity).toEqual({ version: 'V3.30' });
  });
});

describe('BCC records: own fixtures', () => {
  it('places records in time by their power-on seconds, the newest at arrival', () => {
    const d = decodeBccBlock(Buffer.from(`100,50111,INRT,5${RS}98,50111,INVI,2.5`), ctx);
    expect(find(d.readings, 'spacecom-7/pump-11', 'MDC_FLOW_FLUID_PUMP')!.time).toBe(received);
    expect(find(d.readings, 'spacecom-7/pump-11', 'MDC_VOL_FLUID_DELIV_TOTAL')!.time).toBe(received - 2000);
    expect(find(d.readings, 'spacecom-7/pump-11', 'MDC_FLOW_FLUID_PUMP')!.tzOffset).toBe(60);
  });

  it('treats _NV and _NA as no value, not zero', () => {
    const d = decodeBccBlock(Buffer.from(`1,50112,INRT,_NV${RS}1,50112,INVTB,_NA${RS}1,50112,INSOL,_NV`), ctx);
    expect(d.readings.map((m) => [m.refid, Number.isNaN(m.value), m.flags])).toEqual([
      ['MDC_FLOW_FLUID_PUMP', true, Quality.INVALID],
      ['MDC_VOL_FLUID_TBI', true, Quality.INVALID],
    ]);
  });

  it('drops patient fields (other than the weight) without storing or reporting their values', () => {
    const d = decodeBccBlock(Buffer.from(`1,50111,PATNAME,Jensen^Karen${RS}1,50111,PATID,0101904321${RS}1,50111,PATW,72.5`), ctx);
    expect(d.personalDropped).toBe(2);
    expect(JSON.stringify(d)).not.toMatch(/Jensen|0101904321/);
    expect(find(d.readings, 'spacecom-7/pump-11', 'MDC_ATTR_PT_WEIGHT')).toMatchObject({ value: 72.5, unit: 'kg' });
  });

  it('flags an active alarm flag as abnormal', () => {
    const d = decodeBccBlock(Buffer.from(`1,50111,INA3,1${RS}1,50111,INA15,1`), ctx);
    expect(find(d.states, 'spacecom-7/pump-11', 'MDC_EVT_FLUID_LINE_OCCL')).toMatchObject({ value: 1, text: 'active', flags: Quality.ABNORMAL });
    expect(find(d.states, 'spacecom-7/pump-11', 'INA15')).toMatchObject({ system: 'BBRAUN-BCC', flags: Quality.ABNORMAL });
  });

  it('reports malformed records and keeps the good ones', () => {
    const d = decodeBccBlock(Buffer.from(`x,50111,INRT,1${RS}1,5011,INRT,1${RS}1,50111,inrt,1${RS}1,50111,INRT,fast${RS}1,50111,INVI,3`), ctx);
    expect(d.problems.map((p) => [p.code, p.location])).toEqual([
      [ErrorCode.BCC_BAD_RECORD, 'record 1'],
      [ErrorCode.BCC_BAD_RECORD, 'record 2'],
      [ErrorCode.BCC_BAD_RECORD, 'record 3'],
      [ErrorCode.BCC_BAD_RECORD, 'record 4 (INRT)'],
    ]);
    expect(d.readings.map((m) => m.refid)).toEqual(['MDC_VOL_FLUID_DELIV_TOTAL']);
  });

  it('recognises GNACK, GNERR and three-field answers', () => {
    expect(decodeBccBlock(Buffer.from('1,50100,GNACK,0'), ctx).aliveAck).toBe(true);
    expect(decodeBccBlock(Buffer.from('1,50100,GNERR,3'), ctx).deviceErrors).toEqual(['3']);
    expect(decodeBccBlock(Buffer.from('1,50100,V3.30'), ctx).identity).toEqual({ version: 'V3.30' });
  });

  it('addresses pumps by pillar and slot', () => {
    expect(bccSlot('50111')).toBe('11');
    expect(bccSlot('5013O')).toBe('3O');
    expect(bccSlot('50100')).toBeNull();
    expect(bccSlot('50141')).toBeNull();
    expect(bccPumpDeviceId('sc', '50100')).toBe('sc');
    expect(bccPumpDeviceId('sc', '5012A')).toBe('sc/pump-2A');
    expect(bccPumpDeviceId('sc', '60000')).toBe('sc/60000');
  });

  it('reads requests, and the simulator frames what the driver decodes', () => {
    expect(parseBccRequest(Buffer.from('MEM:GETSLOT#13'))).toEqual({ area: 'MEM', command: 'GETSLOT#13' });
    expect(parseBccRequest(Buffer.from('hello'))).toBeNull();
    const frames: BccFrame[] = [];
    const framer = new BccFramer({ onFrame: (f) => frames.push(f), onReject: (r) => expect.fail(r.reason) });
    framer.push(bccFrame('ComSystem/1/1', `1,50111,INSOL,Dobutamin 250mg${RS}1,50111,INRT,4.5`, { final: false }));
    expect(frames[0]).toMatchObject({ bedId: 'ComSystem', final: false });
    expect(decodeBccBlock(frames[0]!.info, ctx).readings.map((m) => m.text ?? m.value)).toEqual(['Dobutamin 250mg', 4.5]);
  });
});
