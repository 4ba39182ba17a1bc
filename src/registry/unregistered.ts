import type { Logger } from '../log.js';
import type { DeviceRegistryApi } from './types.js';

/** Most unregistered devices recorded per run: a sender inventing device ids cannot grow the registry without bound. */
export const MAX_NEW_UNREGISTERED = 10_000;

/**
 * Records devices that send without being registered, once each. An id the registry cannot
 * take (characters it does not allow) and the overflow past MAX_NEW_UNREGISTERED are logged
 * once, not per message; their readings are stored (flagged UNREGISTERED) all the same.
 */
export class UnregisteredDevices {
  private recorded = 0;
  private readonly refused = new Set<string>();
  private overflowLogged = false;

  constructor(
    private readonly devices: DeviceRegistryApi,
    private readonly log: Logger,
    private readonly limit = MAX_NEW_UNREGISTERED,
  ) {}

  note(id: string, source: string, at: number): void {
    if (this.refused.has(id) || this.devices.get(id) !== null) return;
    if (this.recorded >= this.limit) {
      if (!this.overflowLogged) this.log.error({ limit: this.limit }, 'too many unregistered devices this run; more are stored but not listed');
      this.overflowLogged = true;
      return;
    }
    try {
      this.devices.noteUnregistered(id, source, at);
      this.recorded++;
      this.log.warn({ device: id, source }, 'a device that is not registered sends data: stored, not charted, until it is approved');
    } catch (err) {
      if (this.refused.size < this.limit) this.refused.add(id);
      this.log.error({ err, device: id, source }, 'could not record an unregistered device (its readings are stored)');
    }
  }
}
