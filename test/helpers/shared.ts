import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { PACKAGE_ROOT } from '../../src/paths.js';

/** The team's shared folder beside the repo (absent in a user's fresh clone). */
export const SHARED_DIR = join(PACKAGE_ROOT, '..', 'shared');

/** Absolute path of a file under ../shared, or null when ../shared is not there. */
export function sharedPath(relative: string): string | null {
  const path = join(SHARED_DIR, relative);
  return existsSync(path) ? path : null;
}

/** The note tests print when they skip for want of ../shared. */
export const SHARED_ABSENT_NOTE = '../shared is absent (a fresh clone): public-corpus tests skipped';
