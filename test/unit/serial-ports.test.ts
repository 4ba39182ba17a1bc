import { mkdirSync, mkdtempSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { listSerialPorts, scanDevPorts } from '../../drivers/serial/port.js';

describe('listing serial ports', () => {
  it('never throws, also where udevadm is missing (SerialPort.list() throws there)', async () => {
    const ports = await listSerialPorts();
    for (const p of ports) expect(p.path).toMatch(/^\//);
  });

  it('scans a /dev folder for serial devices and their /dev/serial/by-id names', () => {
    const dev = mkdtempSync(join(tmpdir(), 'mdi-dev-'));
    for (const name of ['ttyUSB0', 'ttyUSB10', 'ttyUSB2', 'ttyACM0', 'ttyS1', 'tty', 'null', 'ttyUSBx']) writeFileSync(join(dev, name), '');
    mkdirSync(join(dev, 'serial', 'by-id'), { recursive: true });
    symlinkSync('../../ttyUSB0', join(dev, 'serial', 'by-id', 'usb-FTDI_FT232R_A1B2C3-if00-port0'));
    const ports = scanDevPorts(dev);
    expect(ports.map((p) => p.path.slice(dev.length + 1))).toEqual(['ttyACM0', 'ttyS1', 'ttyUSB0', 'ttyUSB2', 'ttyUSB10']);
    expect(ports.find((p) => p.path.endsWith('ttyUSB0'))).toMatchObject({
      source: 'dev',
      byId: [join(dev, 'serial', 'by-id', 'usb-FTDI_FT232R_A1B2C3-if00-port0')],
    });
    expect(scanDevPorts(join(dev, 'missing'))).toEqual([]);
  });
});
