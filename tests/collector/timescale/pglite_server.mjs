// PGlite (WASM PostgreSQL 17) with the TimescaleDB extension, served over the Postgres wire
// protocol on 127.0.0.1 for tests/timescale/test_timescale.py. In-memory: every start is a
// fresh, empty database.
//
//   node pglite_server.mjs [PORT]      PORT 0 (the default) lets the OS pick a free one
//
// Prints one line `ready HOST:PORT` on stdout once it accepts connections. Stops on SIGTERM,
// SIGINT, or when stdin closes, so it never outlives the test process that started it.
import { PGlite } from '@electric-sql/pglite';
import { timescaledb } from '@electric-sql/pglite/timescaledb';
import { PGLiteSocketServer } from '@electric-sql/pglite-socket';

const port = Number.parseInt(process.argv[2] ?? '0', 10);
if (!Number.isInteger(port) || port < 0 || port > 65535) {
  console.error(`pglite_server: bad port ${process.argv[2]}`);
  process.exit(2);
}

const db = await PGlite.create({ extensions: { timescaledb } });
// Clients take turns (PGlite is one session; concurrent clients would share its transaction
// state). 2, not 1: psycopg opens the next connection as soon as it has closed the previous
// one, before the server has seen that socket close, and at 1 the new one would be refused.
const server = new PGLiteSocketServer({ db, host: '127.0.0.1', port, maxConnections: 2 });
await server.start();

let stopping = false;
async function stop(code) {
  if (stopping) return;
  stopping = true;
  try {
    await server.stop();
    await db.close();
  } finally {
    process.exit(code);
  }
}
process.on('SIGTERM', () => stop(0));
process.on('SIGINT', () => stop(0));
process.stdin.on('end', () => stop(0));
process.stdin.on('error', () => stop(0));
process.stdin.resume();

console.log(`ready ${server.getServerConn()}`);
