/**
 * Device health as Prometheus text exposition format 0.0.4 (no client library: a few gauges
 * and counters do not need one). Labels are device ids and event types only — never a
 * patient, bed occupant or anything from a message body.
 */
import type { DeviceHealthEventType, DeviceHealthSnapshot } from '../registry/health.js';

export const PROMETHEUS_CONTENT_TYPE = 'text/plain; version=0.0.4; charset=utf-8';

/** Label value escaping of the exposition format: backslash, double quote and line feed. */
export function escapeLabelValue(value: string): string {
  return value.replace(/\\/g, '\\\\').replace(/"/g, '\\"').replace(/\n/g, '\\n');
}

interface Family {
  readonly name: string;
  readonly type: 'gauge' | 'counter';
  readonly help: string;
  /** The sample value of one device, or null to leave the device out (unknown). */
  readonly value: (s: DeviceHealthSnapshot) => number | null;
}

const FAMILIES: readonly Family[] = [
  {
    name: 'mdi_device_last_seen_seconds',
    type: 'gauge',
    help: 'Unix time (s) the device was last heard.',
    value: (s) => (s.lastSeen === null ? null : Date.parse(s.lastSeen) / 1000),
  },
  { name: 'mdi_device_messages_total', type: 'counter', help: 'Messages (batches) received from the device since start.', value: (s) => s.messages },
  { name: 'mdi_device_readings_total', type: 'counter', help: 'Readings received from the device since start.', value: (s) => s.readings },
  { name: 'mdi_device_errors_total', type: 'counter', help: 'Parts of the device input refused (dead letters) since start.', value: (s) => s.errors },
  { name: 'mdi_device_silent', type: 'gauge', help: '1 while a bound device is silent beyond its expected interval.', value: (s) => (s.silent ? 1 : 0) },
  {
    name: 'mdi_device_clock_offset_seconds',
    type: 'gauge',
    help: 'Estimated arrival minus device reading time (s); positive: the device clock is behind.',
    value: (s) => s.clockOffsetSeconds,
  },
  {
    name: 'mdi_device_connected',
    type: 'gauge',
    help: '1 when the connection the device last sent on is up, 0 when down (absent when unknown).',
    value: (s) => (s.connection === 'unknown' ? null : s.connection === 'connected' ? 1 : 0),
  },
];

function sample(value: number): string {
  if (Number.isNaN(value)) return 'NaN';
  if (value === Number.POSITIVE_INFINITY) return '+Inf';
  if (value === Number.NEGATIVE_INFINITY) return '-Inf';
  return String(value);
}

export function renderDeviceMetrics(devices: readonly DeviceHealthSnapshot[], eventTotals: ReadonlyMap<DeviceHealthEventType, number>): string {
  const lines: string[] = [];
  for (const f of FAMILIES) {
    lines.push(`# HELP ${f.name} ${f.help}`, `# TYPE ${f.name} ${f.type}`);
    for (const s of devices) {
      const v = f.value(s);
      if (v !== null) lines.push(`${f.name}{device="${escapeLabelValue(s.device)}"} ${sample(v)}`);
    }
  }
  lines.push('# HELP mdi_device_events_total Device health events recorded, by type.', '# TYPE mdi_device_events_total counter');
  for (const [type, n] of eventTotals) lines.push(`mdi_device_events_total{type="${escapeLabelValue(type)}"} ${n}`);
  return `${lines.join('\n')}\n`;
}
