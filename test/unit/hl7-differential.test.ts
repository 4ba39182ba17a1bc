/**
 * Differential test: our reader and decoder against `hl7-standard`, an independent HL7 v2 parser,
 * on every ORU fixture of ours and every ORU of the public corpus (when ../shared is present).
 * For each OBX we compare OBX-3.1 (code), OBX-5.1 (value), OBX-6.1 (unit), OBX-14.1 (time) and
 * OBX-18.1 (device) as the two parsers read them, then check our Measurements against what
 * hl7-standard's strings mean.
 *
 * Known, documented differences (each is asserted below, so a change shows up):
 * 1. hl7-standard does not decode escape sequences (`\F\`, `\S\`, `\XC3B8\` …); its strings are
 *    compared after a minimal independent unescape of the delimiter escapes.
 * 2. It takes a JS string and knows no charsets: the test decodes the bytes per MSH-18 first
 *    (what our reader does itself).
 * 3. Its delimiters are fixed (`|`, `^`): our custom-delimiter fixture is left out.
 * 4. It rejects input that does not start with `MSH` (MLLP start byte of the Aesculon trace):
 *    framing bytes are stripped for it.
 * 5. A line that does not start a segment (a wrapped capture) becomes a segment of its own there;
 *    we join it to the previous segment. OBX rows are not affected in the corpus.
 * 6. `parseFloat` (what a caller of hl7-standard would use) reads `1,926` as 1 and `1,5` as 1;
 *    we refuse such NM values as HL7 data type errors. The rows where this happens are listed.
 */
import { existsSync, readFileSync, readdirSync } from 'node:fs';
import { isUtf8 } from 'node:buffer';
import { createRequire } from 'node:module';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { Hl7Message } from '../../src/codec/hl7.js';
import { decodePcd01 } from '../../src/codec/pcd01.js';
import type { Measurement } from '../../src/model/measurement.js';

interface Hl7StandardSegment {
  get(path: string): unknown;
}
interface Hl7StandardMessage {
  transform(): void;
  getSegments(name: string): Hl7StandardSegment[];
}
const HL7Standard = createRequire(import.meta.url)('hl7-standard') as new (raw: string) => Hl7StandardMessage;

const FIXTURES = fileURLToPath(new URL('../fixtures/hl7', import.meta.url));
const CORPUS = fileURLToPath(new URL('../../../shared/corpus/public', import.meta.url));
const corpusPresent = existsSync(CORPUS);

interface Sample {
  readonly name: string;
  readonly bytes: Buffer;
}

function samples(): Sample[] {
  const out: Sample[] = [];
  for (const file of readdirSync(FIXTURES).sort()) {
    // Difference 3: hl7-standard cannot read other delimiters.
    if (!file.endsWith('.hl7') || file === 'pcd01-custom-delimiters.hl7') continue;
    out.push({ name: file, bytes: readFileSync(join(FIXTURES, file)) });
  }
  if (corpusPresent) {
    for (const file of readdirSync(CORPUS).filter((f) => f.endsWith('.hl7')).sort()) {
      const blocks = readFileSync(join(CORPUS, file), 'latin1').split('\n\n').filter((b) => b.trim() !== '');
      blocks.forEach((block, i) => out.push({ name: `${file} #${i + 1}`, bytes: Buffer.from(block.replace(/\n/g, '\r'), 'latin1') }));
    }
  }
  return out.filter((s) => /\|ORU\^R(01|40|42)/.test(s.bytes.toString('latin1')) && /[\r\n]OBX\|/.test(s.bytes.toString('latin1')));
}

const str = (v: unknown): string => (typeof v === 'string' ? v : '');

// Difference 1: a minimal, independent decoding of the escapes our fixtures and the corpus use.
function unescape(s: string, encoding: BufferEncoding): string {
  return s
    .replace(/\\X((?:[0-9A-Fa-f]{2})+)\\/g, (_m, hex: string) => Buffer.from(hex, 'hex').toString(encoding))
    .replace(/\\([FSTREP])\\/g, (_m, c: string) => ({ F: '|', S: '^', T: '&', R: '~', E: '\\', P: '#' })[c] ?? '');
}

// Difference 2: the text our reader decodes (MSH-18, or UTF-8 when valid, else ISO-8859-1).
function encodingOf(msg: Hl7Message, bytes: Buffer): BufferEncoding {
  if (msg.encoding === 'utf8') return 'utf8';
  if (msg.encoding === 'ascii') return isUtf8(bytes) ? 'utf8' : 'latin1';
  return 'latin1';
}

/** Epoch ms of an HL7 time with an explicit offset, by a regular expression (independent of ours). */
function epochWithOffset(text: string): number | null {
  const m = /^(\d{4})(\d{2})(\d{2})(\d{2})(\d{2})(\d{2})(?:\.(\d{1,4}))?([+-])(\d{2})(\d{2})$/.exec(text.trim());
  if (!m) return null;
  const [, y, mo, d, h, mi, s, frac, sign, oh, om] = m;
  const local = Date.UTC(Number(y), Number(mo) - 1, Number(d), Number(h), Number(mi), Number(s), frac ? Math.floor(Number(`0.${frac}`) * 1000) : 0);
  return local - (sign === '-' ? -1 : 1) * (Number(oh) * 60 + Number(om)) * 60_000;
}

interface Row {
  code: string;
  value: string;
  unit: string;
  time: string;
  device: string;
}

function theirs(bytes: Buffer, encoding: BufferEncoding): Row[] {
  // Differences 2 and 4: hand it decoded text that starts at MSH.
  const text = bytes.toString(encoding).replace(/[\x0b\x1c]/g, '').trimStart();
  const msg = new HL7Standard(text);
  msg.transform();
  return msg.getSegments('OBX').map((seg) => ({
    code: str(seg.get('OBX.3.1')),
    value: str(seg.get('OBX.5.1')),
    unit: str(seg.get('OBX.6.1')),
    time: str(seg.get('OBX.14.1')),
    device: str(seg.get('OBX.18.1')),
  }));
}

function ours(msg: Hl7Message): Row[] {
  return msg.segments('OBX').map((seg) => ({
    code: seg.get(3, 1),
    value: seg.get(5, 1),
    unit: seg.get(6, 1),
    time: seg.get(14, 1),
    device: seg.get(18, 1),
  }));
}

const all = samples();

describe(`differential test against hl7-standard (${all.length} ORU messages${corpusPresent ? '' : '; ../shared/corpus/public absent, fixtures only'})`, () => {
  it('covers our fixtures and, when present, the public corpus', () => {
    expect(all.length).toBeGreaterThanOrEqual(corpusPresent ? 30 : 7);
  });

  const parseFloatOnly: string[] = [];

  for (const sample of all) {
    it(`${sample.name}: same OBX fields, and Measurements that mean what the fields say`, () => {
      const msg = Hl7Message.parse(sample.bytes);
      const a = ours(msg);
      const encoding = encodingOf(msg, sample.bytes);
      const b = theirs(sample.bytes, encoding).map((r) => ({
        code: unescape(r.code, encoding),
        value: unescape(r.value, encoding),
        unit: unescape(r.unit, encoding),
        time: unescape(r.time, encoding),
        device: unescape(r.device, encoding),
      }));
      expect(a).toEqual(b);

      const result = decodePcd01(sample.bytes);
      expect(result.fatal).toBeNull();
      const rejected = new Set(result.rejectedRows.map((r) => r.obx));
      const byRow = new Map<number, Measurement>();
      const segments = msg.segments('OBX');
      let k = 0;
      segments.forEach((seg, i) => {
        // A row carries a value when OBX-5 (all of it) is not empty: CWE values may start with '^'.
        const value = seg.raw(5).trim();
        if (value === '' || value === '""' || rejected.has(i + 1)) return;
        byRow.set(i, result.measurements[k++]!);
      });
      expect(k).toBe(result.measurements.length);

      const types = segments.map((seg) => seg.get(2).trim());
      b.forEach((row, i) => {
        const m = byRow.get(i);
        const float = Number.parseFloat(row.value);
        if (m === undefined) {
          if (rejected.has(i + 1) && types[i] === 'NM' && Number.isFinite(float)) parseFloatOnly.push(`${sample.name} OBX[${i + 1}] ${row.value}`);
          return;
        }
        expect(m.code, `OBX[${i + 1}]-3`).toBe(row.code.trim());
        if (types[i] === 'NM' && Number.isFinite(float) && !(float >= 8388606 && float <= 8388610)) {
          expect(m.value, `OBX[${i + 1}]-5`).toBe(float);
        }
        if (row.device.trim() !== '') expect(m.deviceId, `OBX[${i + 1}]-18`).toBe(row.device.trim());
        const t = epochWithOffset(row.time);
        if (t !== null) expect(m.time, `OBX[${i + 1}]-14`).toBe(t);
      });
    });
  }

  it('documents where parseFloat would have taken a bad NM value (difference 6)', () => {
    const expected = ['pcd01-bad-nm.hl7 OBX[5] 1,5'];
    if (corpusPresent) {
      for (const [n, v] of [
        [18, '1,926'],
        [19, '76,132'],
        [22, '5,251'],
        [26, '1,218'],
      ] as const) {
        // The Aesculon rows are refused for their empty OBX-3 first; the comma values are listed anyway.
        expected.push(`osypka-aesculon-icontrol-hl7-trace.hl7 #1 OBX[${n}] ${v}`);
      }
    }
    expect(parseFloatOnly.filter((x) => x.includes(',')).sort()).toEqual(expected.sort());
  });
});
