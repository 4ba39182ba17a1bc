import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

/**
 * The package root (the folder with package.json), found from this file's location so the
 * same code works from `src/` under the test runner and from `dist/src/` when built.
 */
export const PACKAGE_ROOT: string = (() => {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (;;) {
    if (existsSync(join(dir, 'package.json')) && existsSync(join(dir, 'mappings'))) return dir;
    const parent = dirname(dir);
    if (parent === dir) throw new Error('mdi-gateway: cannot find the package root (package.json beside mappings/)');
    dir = parent;
  }
})();

export const MAPPINGS_DIR = join(PACKAGE_ROOT, 'mappings');
