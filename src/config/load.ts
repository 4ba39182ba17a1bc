import { readFileSync } from 'node:fs';
import { parse as parseYaml, YAMLParseError } from 'yaml';
import { z } from 'zod';
import { ErrorCode, GatewayError } from '../errors.js';
import { Config } from './schema.js';

/**
 * Builds the configuration: schema defaults ← YAML file ← `MDI_*` environment variables,
 * validated once and deep-frozen. Nothing reads `process.env` for settings after this.
 * Every failure is a GatewayError (MDI_ERR_CONFIG_INVALID) whose message names the key.
 */
export function loadConfig(options: { file?: string; env?: NodeJS.ProcessEnv } = {}): Readonly<Config> {
  const env = options.env ?? process.env;
  const fromFile = options.file ? readConfigFile(options.file) : {};
  const merged = applyEnv(fromFile, env);
  const where = options.file ? `${options.file}: ` : '';
  const result = Config.safeParse(merged);
  if (!result.success) {
    throw new GatewayError(ErrorCode.CONFIG_INVALID, `${where}${formatIssues(result.error)}`);
  }
  return deepFreeze(result.data);
}

/** Parses a config object (no file, no env); for tests and programmatic use. */
export function parseConfig(input: unknown): Readonly<Config> {
  const result = Config.safeParse(input ?? {});
  if (!result.success) throw new GatewayError(ErrorCode.CONFIG_INVALID, formatIssues(result.error));
  return deepFreeze(result.data);
}

function readConfigFile(file: string): Record<string, unknown> {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    const reason = (err as NodeJS.ErrnoException).code === 'ENOENT' ? 'file not found' : (err as Error).message;
    throw new GatewayError(ErrorCode.CONFIG_INVALID, `${file}: cannot read config: ${reason}`);
  }
  let doc: unknown;
  try {
    doc = parseYaml(text);
  } catch (err) {
    const detail = err instanceof YAMLParseError ? err.message.split('\n')[0] : String(err);
    throw new GatewayError(ErrorCode.CONFIG_INVALID, `${file}: not valid YAML: ${detail}`);
  }
  if (doc === null || doc === undefined) return {};
  if (typeof doc !== 'object' || Array.isArray(doc)) {
    throw new GatewayError(ErrorCode.CONFIG_INVALID, `${file}: the top level must be a mapping of keys`);
  }
  return doc as Record<string, unknown>;
}

/** One line per problem: `mllp.port: expected number, received string`. */
export function formatIssues(error: z.ZodError): string {
  return error.issues
    .map((issue) => {
      const path = issue.path.length ? issue.path.join('.') : '(top level)';
      if (issue.code === 'unrecognized_keys') {
        const prefix = issue.path.length ? `${issue.path.join('.')}.` : '';
        return `${issue.keys.map((k) => prefix + k).join(', ')}: unknown key${issue.keys.length > 1 ? 's' : ''}`;
      }
      return `${path}: ${issue.message}`;
    })
    .join('; ');
}

/** `MDI_MLLP_MAX_MESSAGE_BYTES` for the path `mllp.maxMessageBytes`. */
export function envName(path: readonly string[]): string {
  return `MDI_${path.map((p) => p.replace(/([a-z0-9])([A-Z])/g, '$1_$2').toUpperCase()).join('_')}`;
}

/** Every leaf setting's path, read from the schema so env names never drift from it. */
export function settingPaths(schema: z.ZodType = Config, prefix: string[] = []): string[][] {
  const inner = unwrap(schema);
  if (inner instanceof z.ZodObject) {
    return Object.entries(inner.shape as Record<string, z.ZodType>).flatMap(([key, child]) =>
      settingPaths(child, [...prefix, key]),
    );
  }
  return [prefix];
}

function unwrap(schema: z.ZodType): z.ZodType {
  let current: z.ZodType = schema;
  for (;;) {
    if (current instanceof z.ZodDefault || current instanceof z.ZodPrefault || current instanceof z.ZodOptional) {
      current = current.unwrap() as z.ZodType;
    } else if (current instanceof z.ZodPipe) {
      current = current.in as z.ZodType;
    } else {
      return current;
    }
  }
}

function applyEnv(base: Record<string, unknown>, env: NodeJS.ProcessEnv): Record<string, unknown> {
  const out = structuredClone(base);
  for (const path of settingPaths()) {
    const raw = env[envName(path)];
    if (raw === undefined) continue;
    let node: Record<string, unknown> = out;
    for (const key of path.slice(0, -1)) {
      const next = node[key];
      if (typeof next !== 'object' || next === null) node[key] = {};
      node = node[key] as Record<string, unknown>;
    }
    node[path[path.length - 1]!] = coerceEnv(raw);
  }
  return out;
}

/** Env values are text; numbers and booleans are written as such, everything else stays text. */
function coerceEnv(raw: string): unknown {
  if (raw === 'true') return true;
  if (raw === 'false') return false;
  if (raw.trim() !== '' && Number.isFinite(Number(raw))) return Number(raw);
  return raw;
}

function deepFreeze<T>(value: T): T {
  if (value && typeof value === 'object') {
    for (const child of Object.values(value)) deepFreeze(child);
    Object.freeze(value);
  }
  return value;
}
