/**
 * The serial samples of the public corpus (../shared/corpus/public), read where they lie and
 * never copied into the project. Each reader returns null when ../shared is absent.
 */
import { readFileSync } from 'node:fs';
import { sharedPath } from './shared.js';

/** Masimo lines (both files), as latin1 text without line ends. */
export function masimoCorpusLines(): { file: string; lines: string[] }[] | null {
  const files = ['masimo-datacapture-serial-sample-lines.txt', 'masimo-rad8-operator-manual-trend-sample.txt'];
  const out: { file: string; lines: string[] }[] = [];
  for (const file of files) {
    const path = sharedPath(`corpus/public/${file}`);
    if (!path) return null;
    out.push({ file, lines: readFileSync(path, 'latin1').split('\n').filter((l) => l !== '') });
  }
  return out;
}

/** MEDIBUS example frames: one hex-encoded frame per line. */
export function medibusCorpusFrames(): Buffer[] | null {
  const path = sharedPath('corpus/public/draeger-medibus-protocol-definition-example-frames.txt');
  if (!path) return null;
  return readFileSync(path, 'latin1')
    .split('\n')
    .filter((l) => l.trim() !== '')
    .map((l) => Buffer.from(l.replace(/\s+/g, ''), 'hex'));
}

/** The hex dump text of the MEDIBUS examples, as `mdi inspect --hex` reads it. */
export function medibusCorpusPath(): string | null {
  return sharedPath('corpus/public/draeger-medibus-protocol-definition-example-frames.txt');
}

const CONTROL: Record<string, number> = { SOH: 0x01, STX: 0x02, ETX: 0x03, EOT: 0x04, ACK: 0x06, NAK: 0x15, ETB: 0x17, RS: 0x1e };

/**
 * The BCC telegram examples, with the spec's notation turned into bytes: `<SOH>` etc. are
 * control bytes and `<EE><80><A1>` raw bytes (see SOURCES.md).
 */
export function bccCorpusTelegrams(): { direction: 'IN' | 'OUT'; bytes: Buffer }[] | null {
  const path = sharedPath('corpus/public/bbraun-bcc-spec-v4-telegram-examples.txt');
  if (!path) return null;
  const out: { direction: 'IN' | 'OUT'; bytes: Buffer }[] = [];
  for (const line of readFileSync(path, 'utf8').split('\n')) {
    const m = /^(IN|OUT): (.*)$/.exec(line);
    if (!m) continue;
    const bytes: number[] = [];
    const token = /<([A-Z]{2,3}|[0-9A-F]{2})>|([\s\S])/g;
    let t: RegExpExecArray | null;
    while ((t = token.exec(m[2]!)) !== null) {
      if (t[1] !== undefined) bytes.push(CONTROL[t[1]] ?? Number.parseInt(t[1], 16));
      else bytes.push(...Buffer.from(t[2]!, 'utf8'));
    }
    out.push({ direction: m[1] as 'IN' | 'OUT', bytes: Buffer.from(bytes) });
  }
  return out;
}
