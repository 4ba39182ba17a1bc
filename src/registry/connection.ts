/**
 * Which transport connection a device's data came in on, and whether it is still up: the
 * `connectionOf(source)` callback of `DeviceHealth`, composed from the running drivers.
 *
 * `src/` does not import driver classes (DESIGN.md: only through the factory registry), so
 * the drivers are recognised by what they expose: the MLLP listener's `isOpen(source)`, the
 * embedded broker's `isConnected(clientId)`, and a serial driver's status (`port`, `link`).
 *
 * By source (the `IngestBatch.source` each driver writes):
 * - `mllp <ip>:<port>`: the TCP connection that delivered the data is open. A sender that opens
 *   a connection per message shows `disconnected` between messages: silence is the signal
 *   that matters for it.
 * - `serial <port>`: the link of the serial driver on that port is open.
 * - `mqtt-broker <client id>`: a client with that id is connected to the embedded broker.
 * - anything else (`mqtt <url> <topic>`: a device behind an external broker, whose connection
 *   the gateway cannot see): `unknown`.
 */
import type { Driver } from '../driver.js';
import type { ConnectionState } from './health.js';

interface MllpLike {
  isOpen(source: string): boolean;
}
interface BrokerLike {
  isConnected(clientId: string): boolean;
}

function has<K extends string>(d: object, method: K): d is Record<K, (...args: never[]) => unknown> {
  return typeof (d as Record<string, unknown>)[method] === 'function';
}

/**
 * `drivers` is read at every call, so drivers started later (or restarted) are seen. Drivers
 * are told apart by name first (`mllp`, `mqtt-broker`, `serial:<id>`), so only serial drivers'
 * statuses are built, and only for a serial source.
 */
export function connectionResolver(drivers: () => readonly Driver[]): (source: string) => ConnectionState {
  return (source) => {
    const space = source.indexOf(' ');
    if (space < 0) return 'unknown';
    const transport = source.slice(0, space);
    const rest = source.slice(space + 1);
    for (const d of drivers()) {
      if (transport === 'mllp' && d.name === 'mllp' && has(d, 'isOpen')) {
        return (d as unknown as MllpLike).isOpen(source) ? 'connected' : 'disconnected';
      }
      if (transport === 'mqtt-broker' && d.name === 'mqtt-broker' && has(d, 'isConnected')) {
        return (d as unknown as BrokerLike).isConnected(rest) ? 'connected' : 'disconnected';
      }
      if (transport === 'serial' && d.name.startsWith('serial:')) {
        const status = d.status() as unknown as { port?: unknown; link?: unknown };
        if (status.port === rest) return status.link === 'open' ? 'connected' : 'disconnected';
      }
    }
    return 'unknown';
  };
}
