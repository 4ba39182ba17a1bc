/**
 * `mdi token …`: API bearer tokens. `new` and `hash` work offline (for the config's
 * http.auth.tokens, which holds hashes only); `new --store`, `list` and `revoke` talk to a
 * running gateway, whose store keeps tokens made through its API.
 */
import { parseArgs } from 'node:util';
import { UsageError } from '../cli.js';
import { hashToken, newToken, TOKEN_NAME, TOKEN_ROLES } from '../registry/tokens.js';
import { call, connection, CONNECTION_HELP, CONNECTION_OPTIONS, readStdin, runCli } from './api-client.js';

const HELP = `Usage: mdi token new --name NAME --role admin|viewer [--store]
       mdi token hash < token-file
       mdi token list
       mdi token revoke NAME

API tokens (Authorization: Bearer <token>). GET requests need a viewer or admin token, any
change an admin token. The gateway keeps only SHA-256 hashes of tokens.

Commands:
  new       make a token and print it with its sha256: hash. Without --store nothing is sent
            anywhere: put the hash in the config (http.auth.tokens) and give the token to its
            user. With --store the running gateway makes it and keeps its hash in its store.
  hash      read a token on stdin and print its sha256: hash (for the config)
  list      the gateway's tokens: names, roles, where they come from (never tokens or hashes)
  revoke    revoke a token kept in the gateway's store; it stops working at once

Options:
  --name NAME         1–64 letters, digits and . _ @ -
  --role ROLE         admin | viewer
  --store             new: let the gateway make and keep the token
  --json              print JSON
${CONNECTION_HELP}
  -h, --help          this help

Examples:
  mdi token new --name anna --role viewer
  mdi token new --name ci --role admin --store --config /etc/mdi/mdi.yaml
  mdi token hash < anna.token
  mdi token revoke bootstrap --token-file ~/.mdi-admin-token`;

export async function runTokenCli(argv: string[]): Promise<number> {
  return runCli('token', HELP, async () => {
    const [sub, ...rest] = argv;
    if (sub === undefined || sub === '-h' || sub === '--help' || sub === 'help') {
      process.stdout.write(`${HELP}\n`);
      return sub === undefined ? 2 : 0;
    }
    if (!['new', 'hash', 'list', 'revoke'].includes(sub)) throw new UsageError(`unknown command '${sub}'`);
    const { values, positionals } = parseArgs({
      args: rest,
      options: {
        ...CONNECTION_OPTIONS,
        name: { type: 'string' },
        role: { type: 'string' },
        store: { type: 'boolean' },
        json: { type: 'boolean' },
        help: { type: 'boolean', short: 'h' },
      },
      allowPositionals: true,
      strict: true,
    });
    if (values.help) {
      process.stdout.write(`${HELP}\n`);
      return 0;
    }
    if (positionals.length !== (sub === 'revoke' ? 1 : 0)) throw new UsageError(sub === 'revoke' ? 'revoke takes one token NAME' : `'token ${sub}' takes no positional arguments`);
    const json = values.json === true;

    switch (sub) {
      case 'new': {
        const name = values.name;
        const role = values.role;
        if (name === undefined || !TOKEN_NAME.test(name)) throw new UsageError('--name must be 1–64 letters, digits and . _ @ -');
        if (role === undefined || !(TOKEN_ROLES as readonly string[]).includes(role)) throw new UsageError('--role must be admin or viewer');
        if (values.store === true) {
          const made = await call<{ name: string; role: string; token: string }>(connection(values), 'POST', '/api/tokens', { name, role });
          process.stdout.write(
            json ? `${JSON.stringify(made)}\n` : `token:  ${made.token}\n\nThe gateway keeps its hash as "${made.name}" (${made.role}). The token is shown only now.\n`,
          );
          return 0;
        }
        const token = newToken();
        const hash = hashToken(token);
        process.stdout.write(
          json
            ? `${JSON.stringify({ name, role, token, hash })}\n`
            : `token:  ${token}\nhash:   ${hash}\n\nIn the config (http.auth.tokens):\n  - name: ${name}\n    role: ${role}\n    hash: ${hash}\n\nGive the token to its user; it is not stored anywhere.\n`,
        );
        return 0;
      }
      case 'hash': {
        const token = (await readStdin()).trim();
        if (token === '') throw new UsageError('no token on stdin');
        process.stdout.write(`${hashToken(token)}\n`);
        return 0;
      }
      case 'list': {
        const { items } = await call<{ items: { name: string; role: string; source: string; created: string | null }[] }>(connection(values), 'GET', '/api/tokens');
        if (json) for (const t of items) process.stdout.write(`${JSON.stringify(t)}\n`);
        else for (const t of items) process.stdout.write(`${t.name.padEnd(24)}${t.role.padEnd(8)}${t.source.padEnd(8)}${t.created ?? ''}\n`);
        return 0;
      }
      case 'revoke': {
        const name = positionals[0]!;
        await call(connection(values), 'DELETE', `/api/tokens/${encodeURIComponent(name)}`);
        process.stdout.write(`revoked ${name}\n`);
        return 0;
      }
    }
    return 2;
  });
}
