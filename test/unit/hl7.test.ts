import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { ErrorCode } from '../../src/errors.js';
import {
  AckCode,
  DEFAULT_DELIMITERS,
  Hl7Message,
  Hl7Segment,
  ackTarget,
  buildAck,
  clearHl7Caches,
  escapeHl7,
  hl7Problem,
  parseNumber,
  splitExport,
} from '../../src/codec/hl7.js';

const fixture = (name: string): Buffer => readFileSync(new URL(`../fixtures/hl7/${name}`, import.meta.url));

/** Joins segments with `eol` and encodes in `encoding` (latin1 for ISO-8859-1 bytes). */
function msg(segments: string[], eol = '\r', encoding: BufferEncoding = 'utf8'): Buffer {
  return Buffer.from(segments.join(eol) + eol, encoding);
}

const MSH = 'MSH|^~\\&|SENDER^0012A1FFFE00B2C3^EUI-64|FAC|RCV|RFAC|20261121101455+0100||ORU^R01^ORU_R01|CTRL-1|P|2.6';

function read(segments: string[], eol = '\r', encoding: BufferEncoding = 'utf8'): Hl7Message {
  const m = Hl7Message.parse(msg(segments, eol, encoding));
  expect(m.fatal).toBeNull();
  return m;
}

describe('Hl7Message.parse: delimiters and MSH', () => {
  it('reads the standard delimiters and numbers MSH fields like the spec', () => {
    const m = read([MSH]);
    expect(m.delimiters).toEqual(DEFAULT_DELIMITERS);
    const h = m.header!;
    expect(h.get(1)).toBe('|');
    expect(h.get(2)).toBe('^~\\&');
    expect(h.get(3)).toBe('SENDER');
    expect(h.get(3, 2)).toBe('0012A1FFFE00B2C3');
    expect(h.get(7)).toBe('20261121101455+0100');
    expect(h.get(9)).toBe('ORU');
    expect(h.get(9, 2)).toBe('R01');
    expect(h.get(9, 3)).toBe('ORU_R01');
    expect(h.get(10)).toBe('CTRL-1');
    expect(h.get(12)).toBe('2.6');
    expect(h.get(13)).toBe('');
    expect(h.fieldCount).toBe(12);
    expect(h.name).toBe('MSH');
  });

  it('reads five encoding characters (v2.7 truncation character)', () => {
    const m = read(['MSH|^~\\&#|A|B|||20261121||ORU^R01|1|P|2.7', 'NTE|1||cut\\P\\here#']);
    expect(m.delimiters.truncation).toBe('#');
    expect(m.header!.get(2)).toBe('^~\\&#');
    expect(m.header!.get(3)).toBe('A');
    // \P\ is the truncation character; a trailing '#' is left as sent.
    expect(m.segment(1)!.get(3)).toBe('cut#here#');
  });

  it('reads custom delimiters', () => {
    const m = Hl7Message.parse(fixture('pcd01-custom-delimiters.hl7'));
    expect(m.delimiters).toEqual({ field: '!', component: '*', repetition: '~', escape: '$', subcomponent: '&', truncation: '' });
    expect(m.header!.get(3, 2)).toBe('0012A1FFFE00B2C3');
    expect(m.segment(3)!.get(5)).toBe('a!b*c&d~e$f^g|h\\i');
  });

  it('skips MLLP start bytes, blank lines and a UTF-8 BOM before MSH, and stops at the MLLP end byte', () => {
    const body = msg([MSH, 'PID|||123']);
    const framed = Buffer.concat([Buffer.from([0x0b, 0x0d, 0x0a, 0x20, 0xef, 0xbb, 0xbf]), body, Buffer.from([0x1c, 0x0d]), Buffer.from('junk')]);
    const m = Hl7Message.parse(framed);
    expect(m.fatal).toBeNull();
    expect(m.segmentCount).toBe(2);
    expect(m.segment(1)!.get(3)).toBe('123');
  });

  it('reports a missing MSH as fatal (table 0357 code 100), with no segments', () => {
    for (const bad of ['', '\r\n', 'PID|||123\r', 'MSX|^~\\&|A\r', 'MS']) {
      const m = Hl7Message.parse(Buffer.from(bad));
      expect(m.fatal?.code).toBe(ErrorCode.HL7_NO_MSH);
      expect(m.fatal?.hl7Code).toBe('100');
      expect(m.segmentCount).toBe(0);
      expect(m.header).toBeNull();
    }
  });

  it('reports unusable delimiters as fatal', () => {
    for (const bad of ['MSHA^~\\&|x', 'MSH||x|y', 'MSH|^^\\&|x', 'MSH|^~\\&#$%|x', 'MSH|^~a&|x', 'MSH\r^~\\&|x']) {
      const m = Hl7Message.parse(Buffer.from(`${bad}\rPID|1`));
      expect(m.fatal?.code, bad).toBe(ErrorCode.HL7_BAD_DELIMITERS);
      expect(m.fatal?.location).toBe('MSH-2');
    }
  });

  it('accepts fewer than four encoding characters with a warning', () => {
    const m = read(['MSH|^~|A|B', 'PID|||1^2~3']);
    expect(m.delimiters.escape).toBe('');
    expect(m.segment(1)!.get(3, 2)).toBe('2');
    expect(m.segment(1)!.get(3, 1, 1, 2)).toBe('3');
    expect(m.warnings.map((w) => w.location)).toEqual(['MSH-2']);
  });
});

describe('Hl7Message.parse: segment boundaries', () => {
  const segs = [MSH, 'PID|||123', 'OBX|1|NM|147842^HR^MDC||80'];

  it.each([
    ['CR', '\r'],
    ['LF', '\n'],
    ['CRLF', '\r\n'],
  ])('accepts %s endings', (_name, eol) => {
    const m = read(segs, eol);
    expect(m.segmentCount).toBe(3);
    expect(m.segmentName(2)).toBe('OBX');
    expect(m.segment(2)!.get(5)).toBe('80');
    expect(m.segment(2)!.get(3, 2)).toBe('HR');
  });

  it('accepts mixed endings, blank and whitespace-only lines, trailing spaces', () => {
    const m = Hl7Message.parse(Buffer.from(`${MSH}\r\n\r\nPID|||123  \n   \n\rOBX|1|NM|147842^HR^MDC||80\r`));
    expect(m.segmentCount).toBe(3);
    expect(m.segment(1)!.get(3)).toBe('123');
    expect(m.segment(2)!.get(5)).toBe('80');
    expect(m.warnings).toEqual([]);
  });

  it('joins a line that does not start a segment to the previous one, without the line break', () => {
    const m = Hl7Message.parse(fixture('pcd01-wrapped-msh10.hl7'));
    expect(m.fatal).toBeNull();
    expect(m.segmentName(1)).toBe('PID');
    expect(m.header!.get(10)).toBe('639070847165381484276804');
    expect(m.header!.raw(10)).toBe('639070847165381484276804');
    expect(m.header!.get(12)).toBe('2.6');
    expect(m.header!.get(18)).toBe('ASCII');
    expect(m.header!.wasContinued).toBe(true);
    expect(m.segmentContinued(0)).toBe(true);
    expect(m.segmentContinued(1)).toBe(false);
    expect(m.warnings).toEqual([expect.objectContaining({ code: ErrorCode.HL7_WRAPPED_SEGMENT, location: 'MSH', severity: 'W' })]);
  });

  it('names the segment occurrence of a wrapped non-MSH segment', () => {
    const m = Hl7Message.parse(Buffer.from(`${MSH}\nOBX|1|ST|1^A^MDC||x\nOBX|2|ST|1^A^MDC||long te\nxt here||||||R\n`));
    expect(m.segmentCount).toBe(3);
    expect(m.segment(2)!.get(5)).toBe('long text here');
    expect(m.segment(2)!.get(11)).toBe('R');
    expect(m.warnings.map((w) => w.location)).toEqual(['OBX[2]']);
  });

  it('gives segments with no fields and 3-character names', () => {
    const m = read([MSH, 'ZX1', 'NTE|']);
    expect(m.segmentName(1)).toBe('ZX1');
    expect(m.segment(1)!.fieldCount).toBe(0);
    expect(m.segment(1)!.get(1)).toBe('');
    expect(m.segment(2)!.fieldCount).toBe(1);
  });
});

describe('Hl7Segment accessors', () => {
  const m = read([MSH, 'PID|1||A1^^^AUTH&1.2.3&ISO^MR~B2^^^OTHER^PI||Doe^John^""||19900101|M', 'OBX|1|NM|147842^MDC_ECG_HEART_RATE^MDC|1.2.1.1| 80 |bpm']);
  const pid = m.segment(1)!;
  const obx = m.segment(2)!;

  it('gets fields, components, subcomponents and repetitions, 1-based', () => {
    expect(pid.get(1)).toBe('1');
    expect(pid.get(3)).toBe('A1');
    expect(pid.get(3, 4)).toBe('AUTH');
    expect(pid.get(3, 4, 2)).toBe('1.2.3');
    expect(pid.get(3, 4, 3)).toBe('ISO');
    expect(pid.get(3, 5)).toBe('MR');
    expect(pid.get(3, 1, 1, 2)).toBe('B2');
    expect(pid.get(3, 4, 1, 2)).toBe('OTHER');
    expect(pid.get(3, 5, 1, 2)).toBe('PI');
    expect(pid.get(5, 3)).toBe('""');
    expect(pid.get(8)).toBe('M');
  });

  it("returns '' for parts that are not there", () => {
    expect(pid.get(3, 1, 1, 3)).toBe('');
    expect(pid.get(3, 9)).toBe('');
    expect(pid.get(3, 4, 9)).toBe('');
    expect(pid.get(99)).toBe('');
    expect(pid.get(0)).toBe('');
    expect(pid.has(2)).toBe(false);
    expect(pid.has(3)).toBe(true);
  });

  it('counts repetitions and components', () => {
    expect(pid.repetitionCount(3)).toBe(2);
    expect(pid.repetitionCount(2)).toBe(0);
    expect(pid.componentCount(3)).toBe(5);
    expect(pid.componentCount(3, 2)).toBe(5);
    expect(pid.componentCount(8)).toBe(1);
    expect(pid.fieldCount).toBe(8);
  });

  it('returns fields raw, with delimiters and escapes untouched', () => {
    expect(pid.raw(3)).toBe('A1^^^AUTH&1.2.3&ISO^MR~B2^^^OTHER^PI');
    expect(pid.raw(3, 2)).toBe('B2^^^OTHER^PI');
    expect(obx.toString()).toBe('OBX|1|NM|147842^MDC_ECG_HEART_RATE^MDC|1.2.1.1| 80 |bpm');
  });

  it('reads numbers from the bytes', () => {
    expect(obx.number(5)).toBe(80);
    expect(obx.number(3)).toBe(147842);
    expect(obx.number(3, 2)).toBeNaN();
    expect(obx.number(9)).toBeNaN();
  });

  it('re-points a segment object for hot loops', () => {
    const seg = new Hl7Segment();
    expect(m.segment(1, seg)).toBe(seg);
    expect(seg.get(3)).toBe('A1');
    m.segment(2, seg);
    expect(seg.get(3)).toBe('147842');
    expect(seg.index).toBe(2);
    expect(m.segment(9, seg)).toBeNull();
  });

  it('finds segments by name', () => {
    expect(m.firstSegment('OBX')!.get(5)).toBe(' 80 ');
    expect(m.firstSegment('ZZZ')).toBeNull();
    expect(m.segments('PID')).toHaveLength(1);
    expect(m.segments().map((s) => s.name)).toEqual(['MSH', 'PID', 'OBX']);
    expect(m.isSegment(2, 'OBX')).toBe(true);
    expect(m.isSegment(2, 'OBR')).toBe(false);
    expect(m.isSegment(7, 'OBX')).toBe(false);
  });
});

describe('escape sequences (HL7 v2.6 2.7)', () => {
  const value = (text: string, eol = '\r'): string => read([MSH, `NTE|1||${text}`], eol).segment(1)!.get(3);

  it('decodes delimiter escapes', () => {
    expect(value('a\\F\\b\\S\\c\\T\\d\\R\\e\\E\\f')).toBe('a|b^c&d~e\\f');
  });

  it('decodes hex data in the message charset', () => {
    expect(value('\\X41\\\\X4243\\')).toBe('ABC');
    expect(value('s\\XC3B8\\ren')).toBe('søren');
    expect(value('\\XC3\\\\XB8\\')).toBe('ø');
  });

  it('drops highlighting and layout, turns line breaks into \\n', () => {
    expect(value('\\H\\Alarm\\N\\ high')).toBe('Alarm high');
    expect(value('line 1\\.br\\line 2')).toBe('line 1\nline 2');
    expect(value('a\\.sp\\b')).toBe('a\nb');
    expect(value('a\\.sp3\\b')).toBe('a\n\n\nb');
    expect(value('a\\.sp 999\\b')).toBe(`a${'\n'.repeat(16)}b`);
    expect(value('\\.in+4\\\\.ti-2\\\\.fi\\\\.nf\\\\.ce\\x')).toBe('x');
    expect(value('a\\C2842\\b\\M2442\\c')).toBe('abc');
  });

  it('keeps what it does not understand literally', () => {
    expect(value('a\\Q\\b')).toBe('a\\Q\\b');
    expect(value('a\\Zlocal\\b')).toBe('a\\Zlocal\\b');
    expect(value('a\\X4\\b')).toBe('a\\X4\\b');
    expect(value('a\\XZZ\\b')).toBe('a\\XZZ\\b');
    expect(value('a\\.xyz\\b')).toBe('a\\.xyz\\b');
    expect(value('end\\')).toBe('end\\');
    expect(value('a\\\\b')).toBe('a\\\\b');
    expect(value('a\\P\\b')).toBe('a\\P\\b');
  });

  it('interns per escape character: the same bytes mean different things in different messages', () => {
    clearHl7Caches();
    const custom = Hl7Message.parse(Buffer.from('MSH|^~$&|A\rNTE|1||x\\F\\y\r'));
    const standard = Hl7Message.parse(Buffer.from('MSH|^~\\&|A\rNTE|1||x\\F\\y\r'));
    for (let i = 0; i < 2; i++) {
      expect(custom.segment(1)!.get(3)).toBe('x\\F\\y');
      expect(standard.segment(1)!.get(3)).toBe('x|y');
    }
  });

  it('escapes text for output and reads it back', () => {
    const text = 'a|b^c&d~e\\f#g\nh';
    expect(escapeHl7(text)).toBe('a\\F\\b\\S\\c\\T\\d\\R\\e\\E\\f#g h');
    const v27 = { ...DEFAULT_DELIMITERS, truncation: '#' };
    expect(escapeHl7('a#b', v27)).toBe('a\\P\\b');
    expect(value(escapeHl7('x|y^z&w~v\\u'))).toBe('x|y^z&w~v\\u');
  });
});

describe('character sets (MSH-18)', () => {
  const danish = 'Ærøskøbing^Søren';

  it('reads UTF-8 when MSH-18 says UNICODE UTF-8', () => {
    const m = read([`${MSH}||||||UNICODE UTF-8`, `PID|||1||${danish}`]);
    expect(m.encoding).toBe('utf8');
    expect(m.charsetName).toBe('UNICODE UTF-8');
    expect(m.segment(1)!.get(5)).toBe('Ærøskøbing');
    expect(m.segment(1)!.get(5, 2)).toBe('Søren');
    expect(m.warnings).toEqual([]);
  });

  it('reads ISO-8859-1 when MSH-18 says 8859/1', () => {
    const bytes = msg([`${MSH}||||||8859/1`, `PID|||1||${danish}`], '\r\n', 'latin1');
    expect(bytes.includes(0xc6)).toBe(true);
    const m = Hl7Message.parse(bytes);
    expect(m.encoding).toBe('latin1');
    expect(m.segment(1)!.get(5)).toBe('Ærøskøbing');
    expect(m.segment(1)!.get(5, 2)).toBe('Søren');
  });

  it('trusts the declaration: UTF-8 bytes declared as 8859/1 come out garbled (the sender must be configured right)', () => {
    const m = read([`${MSH}||||||8859/1`, `PID|||1||${danish}`]);
    expect(m.segment(1)!.get(5)).toBe('Ã\u0086rÃ¸skÃ¸bing');
  });

  it('falls back to ISO-8859-1 (with a warning) when bytes declared UTF-8 are not UTF-8', () => {
    const m = Hl7Message.parse(msg([`${MSH}||||||UNICODE UTF-8`, `PID|||1||${danish}`], '\r', 'latin1'));
    expect(m.segment(1)!.get(5)).toBe('Ærøskøbing');
    expect(m.warnings).toEqual([expect.objectContaining({ code: ErrorCode.HL7_BAD_CHARSET, severity: 'W' })]);
  });

  it('reads undeclared 8-bit text as UTF-8 when valid, else ISO-8859-1, with a warning', () => {
    const utf = Hl7Message.parse(msg([MSH, `PID|||1||${danish}`]));
    expect(utf.encoding).toBe('ascii');
    expect(utf.segment(1)!.get(5)).toBe('Ærøskøbing');
    expect(utf.warnings.map((w) => w.message)).toEqual([expect.stringContaining('UTF-8')]);
    const lat = Hl7Message.parse(msg([MSH, `PID|||1||${danish}`], '\r', 'latin1'));
    expect(lat.segment(1)!.get(5)).toBe('Ærøskøbing');
    expect(lat.warnings.map((w) => w.message)).toEqual([expect.stringContaining('ISO-8859-1')]);
  });

  it('warns about an unknown charset name and still reads the text', () => {
    const m = Hl7Message.parse(fixture('pcd01-unknown-charset.hl7'));
    expect(m.charsetName).toBe('KLINGON-8');
    expect(m.segment(3)!.get(5)).toBe('Søvnig, rolig');
    expect(m.warnings).toEqual([expect.objectContaining({ code: ErrorCode.HL7_BAD_CHARSET, location: 'MSH-18' })]);
  });

  it('reads other single-byte sets through a table (8859/15 has € at 0xA4)', () => {
    const bytes = Buffer.concat([Buffer.from(`${MSH}||||||8859/15\rNTE|1||`), Buffer.from([0xa4, 0x35, 0xe6]), Buffer.from('\r')]);
    expect(Hl7Message.parse(bytes).segment(1)!.get(3)).toBe('€5æ');
  });

  it('decodes hex escapes in the declared charset', () => {
    const m = read([`${MSH}||||||8859/1`, 'NTE|1||S\\XF8\\ren']);
    expect(m.segment(1)!.get(3)).toBe('Søren');
  });

  it('uses defaultCharset when MSH-18 is empty', () => {
    const bytes = msg([MSH, `PID|||1||${danish}`], '\r', 'latin1');
    const m = Hl7Message.parse(bytes, 0, bytes.length, { defaultCharset: '8859/1' });
    expect(m.encoding).toBe('latin1');
    expect(m.segment(1)!.get(5)).toBe('Ærøskøbing');
    expect(m.warnings).toEqual([]);
  });
});

describe('parseNumber', () => {
  const n = (text: string): number => {
    const b = Buffer.from(text, 'latin1');
    return parseNumber(b, 0, b.length);
  };

  it('reads HL7 NM values exactly like the JavaScript number parser would', () => {
    for (const t of ['0', '80', '-3.5', '+2', '.5', '5.', '0.1', '97.5', '123456789012345', '0.000001', '3.999999999999999', '98.6']) {
      expect(n(t), t).toBe(Number.parseFloat(t));
    }
    expect(n(' 7 ')).toBe(7);
    expect(n('-0')).toBe(-0);
    expect(n('1234567890.12345678')).toBe(1234567890.12345678);
    expect(n('1e3')).toBe(1000);
    expect(n('2.5E-2')).toBe(0.025);
  });

  it('refuses anything else', () => {
    for (const t of ['', ' ', 'abc', '1,5', '1.2.3', '0x10', 'Infinity', 'NaN', '-', '.', '1e', '1e+', '12a', '--1', '1 2']) {
      expect(n(t), t).toBeNaN();
    }
  });
});

describe('splitExport', () => {
  it('splits an export with framing, mixed endings, blank lines and a batch envelope', () => {
    const bytes = fixture('export-mixed.txt');
    const ranges = splitExport(bytes);
    expect(ranges).toHaveLength(4);
    const ids = ranges.map((r) => Hl7Message.parse(bytes, r.start, r.end).header!.get(10));
    expect(ids).toEqual(['EXP-1', 'EXP-2', 'EXP-3', 'EXP-4']);
    for (const r of ranges) {
      expect(bytes.subarray(r.start, r.start + 3).toString()).toBe('MSH');
      const last = bytes[r.end - 1]!;
      expect([0x0d, 0x0a, 0x1c, 0x0b, 0x20]).not.toContain(last);
      const m = Hl7Message.parse(bytes, r.start, r.end);
      expect(m.segmentCount).toBe(3);
      expect(m.segments().map((s) => s.name)).toEqual(['MSH', 'OBR', 'OBX']);
    }
  });

  it('keeps a wrapped segment inside its message', () => {
    const bytes = fixture('pcd01-wrapped-msh10.hl7');
    const ranges = splitExport(bytes);
    expect(ranges).toHaveLength(1);
    expect(ranges[0]!.start).toBe(0);
  });

  it('finds nothing in input without MSH lines', () => {
    expect(splitExport(Buffer.alloc(0))).toEqual([]);
    expect(splitExport(Buffer.from('hello\r\nPID|||1\r\n'))).toEqual([]);
    expect(splitExport(Buffer.from('MSHX|'))).toEqual([]);
  });

  it('handles a message without a final line break, and plain Uint8Arrays', () => {
    const text = `${MSH}\rPID|||1`;
    const u8 = new Uint8Array(Buffer.from(text));
    expect(splitExport(u8)).toEqual([{ start: 0, end: text.length }]);
  });

  it('is linear: a 20 MB export of small messages splits quickly', () => {
    const one = Buffer.from(`${MSH}\nPID|||1\nOBX|1|NM|1^A^MDC||1\n\n`);
    const many = Buffer.alloc(one.length * 100_000);
    for (let i = 0; i < 100_000; i++) one.copy(many, i * one.length);
    const t0 = performance.now();
    expect(splitExport(many)).toHaveLength(100_000);
    expect(performance.now() - t0).toBeLessThan(5000);
  });
});

describe('buildAck', () => {
  const fixed = { controlId: 'ACK-1', now: Date.UTC(2026, 10, 21, 9, 15, 0), sendingApplication: 'MDI', sendingFacility: 'RH' };
  const lines = (ack: Buffer, encoding: BufferEncoding = 'latin1'): string[] => ack.toString(encoding).split('\r');

  it('accepts with AA, echoing the sender and naming the message it answers', () => {
    const m = read([`${MSH}|||AL|NE||UNICODE UTF-8`, 'OBX|1|NM|1^A^MDC||1']);
    const ack = buildAck(m, AckCode.AA, [], fixed);
    expect(lines(ack)).toEqual([
      'MSH|^~\\&|MDI|RH|SENDER^0012A1FFFE00B2C3^EUI-64|FAC|20261121101500+0100||ACK^R01^ACK|ACK-1|P|2.6||||||UNICODE UTF-8',
      'MSA|AA|CTRL-1',
      '',
    ]);
    const back = Hl7Message.parse(ack);
    expect(back.fatal).toBeNull();
    expect(back.header!.get(9, 2)).toBe('R01');
    expect(back.firstSegment('MSA')!.get(2)).toBe('CTRL-1');
  });

  it('writes one ERR per problem: location, table 0357 code, severity, our code, message', () => {
    const m = read([MSH, 'OBX|1|NM|1^A^MDC||x']);
    const ack = buildAck(
      m,
      AckCode.AE,
      [
        hl7Problem(ErrorCode.HL7_BAD_VALUE, '102', 'OBX[4]-5', 'OBX[4]-5 is not a number'),
        hl7Problem(ErrorCode.HL7_BAD_TIME, '102', 'OBX[2]-14.1', 'bad | time ^ here', 'W'),
        { code: ErrorCode.STORE_FAILED, message: 'store down', location: '', hl7Code: '' },
      ],
      fixed,
    );
    const l = lines(ack);
    expect(l[1]).toBe('MSA|AE|CTRL-1');
    expect(l[2]).toBe('ERR||OBX^4^5|102^Data type error^HL70357|E|MDI_ERR_HL7_BAD_VALUE^^99MDI|||OBX[4]-5 is not a number');
    expect(l[3]).toBe('ERR||OBX^2^14^^1|102^Data type error^HL70357|W|MDI_ERR_HL7_BAD_TIME^^99MDI|||bad \\F\\ time \\S\\ here');
    expect(l[4]).toBe('ERR|||207^Application internal error^HL70357|E|MDI_ERR_STORE_FAILED^^99MDI|||store down');
    const err = Hl7Message.parse(ack).segments('ERR')[1]!;
    expect(err.get(8)).toBe('bad | time ^ here');
    expect(err.get(2, 3)).toBe('14');
  });

  it('marks every ERR of an AA as a warning', () => {
    const m = read([MSH]);
    const ack = buildAck(m, AckCode.AA, [hl7Problem(ErrorCode.HL7_BAD_VALUE, '102', 'OBX[1]-5', 'x')], fixed);
    expect(lines(ack)[2]).toContain('|W|');
  });

  it('answers AR with an empty MSA-2 when there is no usable MSH', () => {
    for (const target of [null, Hl7Message.parse(Buffer.from('garbage\r')), Hl7Message.parse(Buffer.from('MSH|^^\\&|x\r'))]) {
      const ack = buildAck(target, AckCode.AA, [hl7Problem(ErrorCode.HL7_NO_MSH, '100', 'MSH', 'No MSH')], fixed);
      const l = lines(ack);
      expect(l[0]).toBe('MSH|^~\\&|MDI|RH|||20261121101500+0100||ACK|ACK-1|P|2.6');
      expect(l[1]).toBe('MSA|AR|');
      expect(l[2]).toBe('ERR||MSH^1|100^Segment sequence error^HL70357|E|MDI_ERR_HL7_NO_MSH^^99MDI|||No MSH');
    }
  });

  it('echoes v2.7 delimiters and the processing id and version as sent', () => {
    const m = read(['MSH|^~\\&#|A|B|||20261121||ORU^R40^ORU_R40|X1|D|2.7']);
    const l = lines(buildAck(m, AckCode.AA, [], fixed));
    expect(l[0]).toBe('MSH|^~\\&#|MDI|RH|A|B|20261121101500+0100||ACK^R40^ACK|ACK-1|D|2.7');
  });

  it('encodes the ACK in the sender’s charset (ISO-8859-1 Ø stays one byte)', () => {
    const bytes = msg(['MSH|^~\\&|MONITOR Ø|AFSNIT Æ|||20261121||ORU^R01|X2|P|2.6||||||8859/1'], '\r', 'latin1');
    const ack = buildAck(Hl7Message.parse(bytes), AckCode.AA, [hl7Problem(ErrorCode.HL7_BAD_VALUE, '102', '', 'værdi ≠ tal')], fixed);
    expect(ack.includes(Buffer.from('MONITOR \u00d8', 'latin1'))).toBe(true);
    expect(ack.includes(Buffer.from('Ø', 'utf8'))).toBe(false);
    expect(Hl7Message.parse(ack).header!.get(5)).toBe('MONITOR Ø');
    // '≠' is not in ISO-8859-1.
    expect(ack.toString('latin1')).toContain('værdi ? tal');
  });

  it('encodes the ACK in UTF-8 for a UTF-8 sender', () => {
    const m = read(['MSH|^~\\&|MONITOR Ø|B|||20261121||ORU^R01|X3|P|2.6||||||UNICODE UTF-8']);
    const ack = buildAck(m, AckCode.AA, [], fixed);
    expect(ack.includes(Buffer.from('MONITOR Ø', 'utf8'))).toBe(true);
    expect(Hl7Message.parse(ack).header!.get(5)).toBe('MONITOR Ø');
  });

  it('adds ERR-1 and MSA-3 for senders before v2.5', () => {
    const m = read(['MSH|^~\\&|iControl||||20171221145413||ORU^R01|20171221145413785|P|2.3']);
    const l = lines(buildAck(m, AckCode.AE, [hl7Problem(ErrorCode.HL7_MISSING_FIELD, '101', 'OBX[1]-3', 'OBX[1]-3 is empty')], fixed));
    expect(l[1]).toBe('MSA|AE|20171221145413785|OBX[1]-3 is empty');
    expect(l[2]).toBe('ERR|OBX^1^3^101&Required field missing&HL70357|OBX^1^3|101^Required field missing^HL70357|E|MDI_ERR_HL7_MISSING_FIELD^^99MDI|||OBX[1]-3 is empty');
  });

  it('answers a wrapped MSH-10 with the joined control id', () => {
    const m = Hl7Message.parse(fixture('pcd01-wrapped-msh10.hl7'));
    expect(lines(buildAck(m, AckCode.AA, [], fixed))[1]).toBe('MSA|AA|639070847165381484276804');
  });

  it('bounds the number of ERR segments', () => {
    const problems = Array.from({ length: 120 }, (_, i) => hl7Problem(ErrorCode.HL7_BAD_VALUE, '102', `OBX[${i + 1}]-5`, `row ${i + 1}`));
    const l = lines(buildAck(read([MSH]), AckCode.AE, problems, { ...fixed, maxErrors: 10 }));
    const errs = l.filter((x) => x.startsWith('ERR'));
    expect(errs).toHaveLength(10);
    expect(errs[9]).toContain('111 further problem(s) not listed');
  });

  it('builds from an AckTarget copied out of a frame that is then overwritten', () => {
    const frame = msg([MSH]);
    const target = ackTarget(Hl7Message.parse(frame))!;
    frame.fill(0x20);
    expect(lines(buildAck(target, AckCode.AA, [], fixed))[1]).toBe('MSA|AA|CTRL-1');
  });

  it('generates a fresh 20-character control id and the current time by default', () => {
    const a = lines(buildAck(read([MSH]), AckCode.AA));
    const b = lines(buildAck(read([MSH]), AckCode.AA));
    const idA = a[0]!.split('|')[9]!;
    const idB = b[0]!.split('|')[9]!;
    expect(idA).toMatch(/^[0-9a-f]{20}$/);
    expect(idA).not.toBe(idB);
    expect(a[0]!.split('|')[6]).toMatch(/^\d{14}(\.\d{3})?[+-]\d{4}$/);
  });
});

describe('robustness', () => {
  // A small deterministic PRNG (mulberry32) so failures reproduce.
  function rng(seed: number): () => number {
    let a = seed;
    return () => {
      a = (a + 0x6d2b79f5) | 0;
      let t = Math.imul(a ^ (a >>> 15), 1 | a);
      t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
      return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
    };
  }

  it('never throws on random bytes or mutated messages, whatever is asked', () => {
    const next = rng(20261121);
    const base = fixture('pcd01-monitor-utf8.hl7');
    const alphabet = Buffer.from('|^~\\&#\r\n\x0b\x1cMSHOBX0123456789.+- Aæ\xff');
    for (let round = 0; round < 3000; round++) {
      let bytes: Buffer;
      if (round % 3 === 0) {
        bytes = Buffer.alloc(Math.floor(next() * 300));
        for (let i = 0; i < bytes.length; i++) bytes[i] = alphabet[Math.floor(next() * alphabet.length)]!;
        if (next() < 0.5) bytes = Buffer.concat([Buffer.from('MSH|^~\\&|'), bytes]);
      } else {
        bytes = Buffer.from(base);
        for (let k = 0; k < 1 + Math.floor(next() * 8); k++) bytes[Math.floor(next() * bytes.length)] = alphabet[Math.floor(next() * alphabet.length)]!;
      }
      const m = Hl7Message.parse(bytes);
      for (let i = 0; i < m.segmentCount; i++) {
        const seg = m.segment(i)!;
        for (let f = 0; f < 20; f++) {
          seg.get(f, 1 + (f % 3), 1 + (f % 2), 1 + (f % 2));
          seg.raw(f);
          seg.number(f);
          seg.repetitionCount(f);
        }
      }
      void m.warnings;
      buildAck(m, AckCode.AE, [hl7Problem(ErrorCode.HL7_BAD_SEGMENT, '100', 'OBX[1]', 'x')]);
      splitExport(bytes);
    }
  });

  it('is linear in the number of wrapped lines', () => {
    const body = Array.from({ length: 50_000 }, (_, i) => `continued text ${i}`).join('\n');
    const bytes = Buffer.from(`${MSH}\nNTE|1||${body}\nPID|||1\n`);
    const t0 = performance.now();
    const m = Hl7Message.parse(bytes);
    expect(m.segmentCount).toBe(3);
    expect(m.segment(1)!.get(3).length).toBeGreaterThan(500_000);
    expect(performance.now() - t0).toBeLessThan(5000);
  });
});
