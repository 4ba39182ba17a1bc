import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { getJson, startTestGateway, type TestGateway } from '../helpers/gateway.js';
import { MllpTestClient } from '../helpers/mllp-client.js';
import { SHARED_ABSENT_NOTE, sharedPath } from '../helpers/shared.js';

/**
 * Every message of the public corpus (real captures, TF examples, deliberately odd ones) sent
 * over one MLLP connection, as a device gateway would: each gets an ACK naming its MSH-10, the
 * PCD-01/04/10 ones are accepted, the others (queries, orders, ACKs) are refused with AR, and
 * the connection survives all of them. Read from ../shared where it lies; never copied.
 */
const corpusDir = sharedPath('corpus/public');
if (!corpusDir) console.warn(SHARED_ABSENT_NOTE);

interface CorpusMessage {
  file: string;
  text: string;
  type: string;
  controlId: string;
}

function corpusMessages(dir: string): CorpusMessage[] {
  const out: CorpusMessage[] = [];
  for (const file of readdirSync(dir).filter((f) => f.endsWith('.hl7')).sort()) {
    // SOURCES.md: one message per block, blocks separated by an empty line, LF segment ends.
    for (const block of readFileSync(join(dir, file), 'latin1').split(/\n[ \t]*\n/)) {
      const lines = block.replace(/[\x0b\x1c]/g, '').split('\n').filter((l) => l.trim() !== '');
      if (!lines.some((l) => l.startsWith('MSH'))) continue;
      // A capture that wrapped a segment (B. Braun's MSH-10) continues on a line that does not
      // start like a segment; join it the way the gateway does to know the expected MSH-10.
      const joined: string[] = [];
      for (const line of lines) {
        if (/^[A-Z][A-Z0-9]{2}[|]/.test(line) || joined.length === 0) joined.push(line);
        else joined[joined.length - 1] += line;
      }
      const msh = joined.find((l) => l.startsWith('MSH'))!.split('|');
      out.push({ file, text: `${lines.join('\r')}\r`, type: msh[8] ?? '', controlId: (msh[9] ?? '').trim() });
    }
  }
  return out;
}

describe.skipIf(!corpusDir)('the public PCD corpus over MLLP', () => {
  let gw: TestGateway;
  beforeAll(async () => {
    gw = await startTestGateway();
  });
  afterAll(async () => {
    await gw.stop();
  });

  it('answers every message, accepts the PCD ones and refuses the rest with AR', async () => {
    const messages = corpusMessages(corpusDir!);
    expect(messages.length).toBeGreaterThanOrEqual(40);
    const client = await MllpTestClient.connect(gw.mllpPort);
    for (const m of messages) client.send(Buffer.from(m.text, 'latin1'));
    const acks = await client.waitForAcks(messages.length);
    messages.forEach((m, i) => {
      const ack = acks[i]!;
      const where = `${m.file} ${m.type} ${m.controlId}`;
      expect(ack.controlId.trim(), where).toBe(m.controlId);
      if (/^ORU\^R(01|40|42)/.test(m.type)) expect(ack.code, where).toBe('AA');
      else expect(ack.code, where).toBe('AR');
    });
    await client.close();
    const status = await getJson<{ store: { observations: number; deadLetters: number } }>(`${gw.httpUrl}/api/status`);
    expect(status.body.store.observations).toBeGreaterThan(200);
    // The refused messages and the bad rows (Comen's text in NM rows, Aesculon's empty codes) are kept.
    expect(status.body.store.deadLetters).toBeGreaterThan(10);
  });
});
