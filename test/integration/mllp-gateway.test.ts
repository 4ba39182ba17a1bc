import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { encodeFrame } from '../../src/codec/mllp.js';
import { ErrorCode } from '../../src/errors.js';
import { CPR_SYSTEM } from '../../src/model/measurement.js';
import { getJson, startTestGateway, type TestGateway } from '../helpers/gateway.js';
import { MllpTestClient } from '../helpers/mllp-client.js';
import { HR_ROW, pcd01Message, SPO2_ROW } from '../helpers/pcd01-message.js';

interface Item {
  time: string;
  device: string;
  code: number | null;
  metric: string;
  value: number | null;
  unit: string;
  loinc: string | null;
  text: string | null;
  flags: string[];
  patient: string | null;
  location: string | null;
}
interface DeadLetterItem {
  id: number;
  code: string;
  reason: string;
  location: string;
  controlId: string | null;
  source: string;
  raw: string;
}

let gw: TestGateway;
beforeAll(async () => {
  gw = await startTestGateway({ mllp: { maxMessageBytes: 4096 } });
});
afterAll(async () => {
  await gw.stop();
});

async function observations(query: string): Promise<Item[]> {
  const { status, body } = await getJson<{ items: Item[] }>(`${gw.httpUrl}/api/observations?${query}`);
  expect(status).toBe(200);
  return body.items;
}

async function deadLetters(): Promise<DeadLetterItem[]> {
  return (await getJson<{ items: DeadLetterItem[] }>(`${gw.httpUrl}/api/dead-letters?limit=1000`)).body.items;
}

describe('PCD-01 over MLLP into the store', () => {
  it('answers /health once ready', async () => {
    const { status, body } = await getJson(`${gw.httpUrl}/health`);
    expect(status).toBe(200);
    expect(body).toEqual({ status: 'ok' });
  });

  it('ACKs AA with MSA-2 = MSH-10 and stores normalized observations', async () => {
    const client = await MllpTestClient.connect(gw.mllpPort);
    client.send(pcd01Message({ controlId: 'BASIC-1', device: 'AAAAAAAAAAAAAAA1' }));
    const [ack] = await client.waitForAcks(1);
    expect(ack).toMatchObject({ code: 'AA', controlId: 'BASIC-1', errors: [] });
    expect(ack!.type).toBe('ACK^R01^ACK');
    const items = await observations('device=AAAAAAAAAAAAAAA1&order=asc');
    expect(items.map((i) => [i.code, i.metric, i.value, i.unit, i.loinc])).toEqual([
      [147842, 'MDC_ECG_HEART_RATE', 88, '/min', '8867-4'],
      [150456, 'MDC_PULS_OXIM_SAT_O2', 97, '%', '59408-5'],
    ]);
    expect(items[0]!.time).toBe('2026-11-21T10:14:55+01:00');
    expect(items[0]!.location).toBe('ICU/12/1');
    // The patient is a pseudonym, never the CPR number.
    expect(items[0]!.patient).toBe(gw.gateway.storeForTests().pseudonym({ system: CPR_SYSTEM, value: '0101901234' }));
    expect(JSON.stringify(items)).not.toContain('0101901234');
    await client.close();
  });

  it('handles many pipelined messages split at every kind of boundary, ACKed in order', async () => {
    const client = await MllpTestClient.connect(gw.mllpPort);
    const n = 200;
    const stream = Buffer.concat(
      Array.from({ length: n }, (_, i) =>
        encodeFrame(pcd01Message({ controlId: `PIPE-${i}`, device: 'BBBBBBBBBBBBBBB2', lineEnd: i % 2 ? '\r\n' : '\r' })),
      ),
    );
    // Write in uneven pieces so frames are split mid-segment, mid-frame and mid-end-block.
    let offset = 0;
    let step = 1;
    while (offset < stream.length) {
      client.write(stream.subarray(offset, offset + step));
      offset += step;
      step = (step * 7 + 3) % 1500 || 1;
    }
    const acks = await client.waitForAcks(n);
    expect(acks.map((a) => a.controlId)).toEqual(Array.from({ length: n }, (_, i) => `PIPE-${i}`));
    expect(acks.every((a) => a.code === 'AA')).toBe(true);
    expect(await observations('device=BBBBBBBBBBBBBBB2&limit=10000')).toHaveLength(2 * n);
    await client.close();
  });

  it('keeps the good rows of a message with one bad OBX and dead-letters the bad row', async () => {
    const client = await MllpTestClient.connect(gw.mllpPort);
    const bad: [string, string, string, string, string] = ['151562^MDC_RESP_RATE^MDC', 'NM', 'abc', '264928^MDC_DIM_RESP_PER_MIN^MDC', '1.3.1.1'];
    client.send(pcd01Message({ controlId: 'BADROW-1', device: 'CCCCCCCCCCCCCCC3', rows: [HR_ROW, bad, SPO2_ROW] }));
    const [ack] = await client.waitForAcks(1);
    expect(ack!.code).toBe('AA');
    expect(ack!.errors).toHaveLength(1);
    expect(ack!.errors[0]).toContain('102'); // HL7 0357: data type error
    expect(ack!.errors[0]).toMatch(/OBX\^3\^5/);
    const items = await observations('device=CCCCCCCCCCCCCCC3');
    expect(items.map((i) => i.code).sort()).toEqual([147842, 150456]);
    const letter = (await deadLetters()).find((d) => d.controlId === 'BADROW-1');
    expect(letter).toMatchObject({ code: ErrorCode.HL7_BAD_VALUE });
    expect(letter!.location).toContain('OBX');
    const raw = await fetch(`${gw.httpUrl}${letter!.raw}`);
    expect((await raw.text())).toContain('abc');
    await client.close();
  });

  it('answers AR with an ERR to a message it does not take, and the connection keeps working', async () => {
    const client = await MllpTestClient.connect(gw.mllpPort);
    client.send(pcd01Message({ controlId: 'QRY-1', messageType: 'QRY^R02^QRY_R02' }));
    client.send(Buffer.from('this is not HL7 at all\r'));
    client.send(pcd01Message({ controlId: 'AFTER-1', device: 'DDDDDDDDDDDDDDD4' }));
    const acks = await client.waitForAcks(3);
    expect(acks[0]).toMatchObject({ code: 'AR', controlId: 'QRY-1' });
    expect(acks[0]!.errors[0]).toMatch(/\|200\^Unsupported message type\^HL70357\|E\|/);
    expect(['AR', 'AE']).toContain(acks[1]!.code);
    expect(acks[1]!.errors.length).toBeGreaterThan(0);
    expect(acks[2]).toMatchObject({ code: 'AA', controlId: 'AFTER-1' });
    const letters = await deadLetters();
    expect(letters.some((d) => d.controlId === 'QRY-1')).toBe(true);
    await client.close();
  });

  it('answers AR to an oversized frame and resyncs at the next start block', async () => {
    const client = await MllpTestClient.connect(gw.mllpPort);
    const rows = Array.from({ length: 200 }, () => HR_ROW);
    client.send(pcd01Message({ controlId: 'HUGE-1', rows }));
    client.send(pcd01Message({ controlId: 'SMALL-1', device: 'EEEEEEEEEEEEEEE5' }));
    const acks = await client.waitForAcks(2);
    expect(acks[0]).toMatchObject({ code: 'AR', controlId: 'HUGE-1' });
    expect(acks[1]).toMatchObject({ code: 'AA', controlId: 'SMALL-1' });
    const letter = (await deadLetters()).find((d) => d.controlId === 'HUGE-1');
    expect(letter?.code).toBe(ErrorCode.MLLP_FRAME_TOO_LARGE);
    await client.close();
  });

  it('keeps garbage between frames as a dead letter and still takes the next frame', async () => {
    const client = await MllpTestClient.connect(gw.mllpPort);
    const before = (await deadLetters()).length;
    client.write(Buffer.from([0x00, 0xff, 0x41, 0x42, 0x43]));
    client.send(pcd01Message({ controlId: 'POSTGARBAGE-1' }));
    const [ack] = await client.waitForAcks(1);
    expect(ack!.code).toBe('AA');
    const letters = await deadLetters();
    expect(letters.length).toBe(before + 1);
    expect(letters[0]!.code).toBe(ErrorCode.MLLP_GARBAGE);
    await client.close();
  });

  it('reads ISO-8859-1 as MSH-18 declares and answers in the same charset', async () => {
    const client = await MllpTestClient.connect(gw.mllpPort);
    const text: [string, string, string, string, string] = ['184327^MDC_ECG_STAT_RHY^MDC', 'ST', 'Blødning på venstre side', '', '1.1.1.2'];
    for (const charset of ['latin1', 'utf8'] as const) {
      const device = charset === 'latin1' ? 'FFFFFFFFFFFFFFF6' : 'FFFFFFFFFFFFFFF7';
      client.send(pcd01Message({ controlId: `CS-${charset}`, device, charset, rows: [HR_ROW, text] }));
      await client.waitForAcks(charset === 'latin1' ? 1 : 2);
      const items = await observations(`device=${device}&metric=184327`);
      expect(items[0]!.text).toBe('Blødning på venstre side');
    }
    expect(client.acks.map((a) => a.code)).toEqual(['AA', 'AA']);
    // The ACK to the Latin-1 message declares and uses Latin-1 (MSH-18 echoed).
    expect(client.acks[0]!.raw.toString('latin1')).toContain('8859/1');
    await client.close();
  });

  it('stores a retransmitted message once and answers AA both times', async () => {
    const client = await MllpTestClient.connect(gw.mllpPort);
    const message = pcd01Message({ controlId: 'RETX-1', device: 'AAAAAAAAAAAAAA08' });
    client.send(message);
    await client.waitForAcks(1);
    client.send(message);
    const acks = await client.waitForAcks(2);
    expect(acks.map((a) => `${a.code}:${a.controlId}`)).toEqual(['AA:RETX-1', 'AA:RETX-1']);
    expect(await observations('device=AAAAAAAAAAAAAA08')).toHaveLength(2);
    await client.close();
  });

  it('stores a different message that reuses a control id (a device whose counter restarted)', async () => {
    const client = await MllpTestClient.connect(gw.mllpPort);
    client.send(pcd01Message({ controlId: 'REUSED-1', device: 'AAAAAAAAAAAAAA09', time: '20261121101455+0100' }));
    client.send(pcd01Message({ controlId: 'REUSED-1', device: 'AAAAAAAAAAAAAA09', time: '20261121101555+0100' }));
    const acks = await client.waitForAcks(2);
    expect(acks.map((a) => a.code)).toEqual(['AA', 'AA']);
    expect(await observations('device=AAAAAAAAAAAAAA09')).toHaveLength(4);
    await client.close();
  });

  it('keeps a frame cut off by a closed connection as a dead letter', async () => {
    const client = await MllpTestClient.connect(gw.mllpPort);
    const framed = encodeFrame(pcd01Message({ controlId: 'CUT-1' }));
    client.write(framed.subarray(0, framed.length - 40));
    await client.close();
    await expect.poll(async () => (await deadLetters()).some((d) => d.code === ErrorCode.MLLP_TRUNCATED)).toBe(true);
  });

  it('refuses bad query parameters with 400 naming them', async () => {
    const bad = await getJson<{ error: string }>(`${gw.httpUrl}/api/observations?since=yesterday`);
    expect(bad.status).toBe(400);
    expect(bad.body.error).toMatch(/since/);
    const unknown = await getJson<{ error: string }>(`${gw.httpUrl}/api/observations?patient=0101901234`);
    expect(unknown.status).toBe(400);
    expect(unknown.body.error).toMatch(/unknown parameter patient/);
  });
});

describe('when the store cannot write', () => {
  it('answers AE, never AA', async () => {
    const local = await startTestGateway();
    const client = await MllpTestClient.connect(local.mllpPort);
    await local.gateway.storeForTests().close();
    client.send(pcd01Message({ controlId: 'NOSTORE-1' }));
    const [ack] = await client.waitForAcks(1);
    expect(ack!.code).toBe('AE');
    expect(ack!.errors[0]).toContain('207');
    await client.close();
    await local.stop();
  });
});
