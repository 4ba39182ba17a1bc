/**
 * Pseudo-terminal pairs for serial tests: `socat` links on fresh temporary paths. Every pair a
 * test makes is stopped by `stopPtyPairs()` (call it in `afterEach`), so no socat outlives its
 * test even when the test fails. Unplugging a cable is `pair.unplug()` (socat killed: both ports
 * vanish) and plugging it back `pair.replug()` (socat started again on the same paths).
 */
import { spawnSync } from 'node:child_process';
import { createPtyPair, type PtyPair } from '../../simulators/pty.js';

const open = new Set<PtyPair>();

/** Whether socat is installed (`.ci/run` installs it); tests skip with a note otherwise. */
export const SOCAT_AVAILABLE = spawnSync('socat', ['-V'], { stdio: 'ignore' }).status === 0;

/** The note pty tests show when they skip. */
export const SOCAT_ABSENT_NOTE = 'socat is not installed (apt-get install socat): pty tests skipped';

/** A pty pair that `stopPtyPairs()` will clean up. */
export async function testPtyPair(): Promise<PtyPair> {
  const pair = await createPtyPair();
  open.add(pair);
  return pair;
}

/** Stops every pair made by `testPtyPair()` (kills its socat, removes its folder). */
export async function stopPtyPairs(): Promise<void> {
  const pairs = [...open];
  open.clear();
  await Promise.all(pairs.map((p) => p.stop()));
}
