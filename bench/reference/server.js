// The seed's stack, lean: Socket.IO v4 + @socket.io/redis-adapter + pg, serving the send path of
// the messaging contract (JWT handshake, createConversation, sendMessage -> newMessage). It is the
// yardstick the Python service is measured against, so it is written the way a competent Node
// engineer would write it for production: a pg Pool, named (prepared) statements, one INSERT and
// one commit per message, the ack only after the commit, fan-out through the Redis adapter.
//
// Settings (env, or --name=value arguments): PORT (8100), HOST (127.0.0.1), DATABASE_URL,
// REDIS_URL (redis://127.0.0.1:6379), JWT_SECRET, PG_POOL_SIZE (10).
'use strict';

const crypto = require('node:crypto');
const http = require('node:http');
const { Server } = require('socket.io');
const { createAdapter } = require('@socket.io/redis-adapter');
const { createClient } = require('redis');
const { Pool } = require('pg');
const jwt = require('jsonwebtoken');

function settings() {
  const args = {};
  for (const arg of process.argv.slice(2)) {
    const match = /^--([a-z-]+)=(.*)$/.exec(arg);
    if (match) args[match[1].replace(/-/g, '_').toUpperCase()] = match[2];
  }
  const get = (name, fallback) => args[name] ?? process.env[name] ?? fallback;
  const cfg = {
    port: Number(get('PORT', '8100')),
    host: get('HOST', '127.0.0.1'),
    databaseUrl: get('DATABASE_URL', ''),
    redisUrl: get('REDIS_URL', 'redis://127.0.0.1:6379'),
    jwtSecret: get('JWT_SECRET', ''),
    poolSize: Number(get('PG_POOL_SIZE', '10')),
  };
  if (!cfg.databaseUrl) throw new Error('DATABASE_URL is required');
  if (!cfg.jwtSecret) throw new Error('JWT_SECRET is required');
  return cfg;
}

const SCHEMA = `
CREATE TABLE IF NOT EXISTS ref_conversations (
  id uuid PRIMARY KEY,
  user_a text NOT NULL,
  user_b text NOT NULL,
  created_at timestamptz NOT NULL,
  UNIQUE (user_a, user_b)
);
CREATE TABLE IF NOT EXISTS ref_messages (
  id uuid PRIMARY KEY,
  conversation_id uuid NOT NULL REFERENCES ref_conversations (id),
  author_id text NOT NULL,
  content text NOT NULL,
  status text NOT NULL DEFAULT 'sent',
  created_at timestamptz NOT NULL,
  client_message_id text,
  UNIQUE (author_id, client_message_id)
);
CREATE INDEX IF NOT EXISTS ref_messages_conversation_created
  ON ref_messages (conversation_id, created_at);
`;

// Time-ordered ids (UUIDv7: 48-bit Unix milliseconds, then random bits), like the contract's.
function uuid7() {
  const bytes = crypto.randomBytes(16);
  const ms = BigInt(Date.now());
  for (let i = 0; i < 6; i++) bytes[i] = Number((ms >> BigInt(8 * (5 - i))) & 0xffn);
  bytes[6] = (bytes[6] & 0x0f) | 0x70;
  bytes[8] = (bytes[8] & 0x3f) | 0x80;
  const hex = bytes.toString('hex');
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}

const UUID_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

class ClientError extends Error {
  constructor(code, message) {
    super(message);
    this.code = code;
  }
}

const fail = (code, message) => {
  throw new ClientError(code, message);
};

function messageView(row) {
  return {
    id: row.id,
    conversationId: row.conversation_id,
    authorId: row.author_id,
    content: row.content,
    status: row.status,
    createdAt: row.created_at instanceof Date ? row.created_at.toISOString() : row.created_at,
    clientMessageId: row.client_message_id,
  };
}

function conversationView(row) {
  return {
    id: row.id,
    participantIds: [row.user_a, row.user_b],
    createdAt: row.created_at.toISOString(),
  };
}

function makeHandlers(pool) {
  // Conversations never change their participants, so each replica keeps what it has read.
  const participants = new Map();

  async function participantsOf(conversationId) {
    let pair = participants.get(conversationId);
    if (pair === undefined) {
      const { rows } = await pool.query({
        name: 'conversation-participants',
        text: 'SELECT user_a, user_b FROM ref_conversations WHERE id = $1',
        values: [conversationId],
      });
      if (rows.length === 0) return null;
      pair = [rows[0].user_a, rows[0].user_b];
      participants.set(conversationId, pair);
    }
    return pair;
  }

  async function createConversation(userId, payload) {
    const other = payload && payload.participantId;
    if (typeof other !== 'string' || other.length === 0 || other.length > 128) {
      fail('VALIDATION_FAILED', 'participantId must be a non-empty string');
    }
    if (other === userId) fail('VALIDATION_FAILED', 'cannot start a conversation with yourself');
    const [a, b] = userId < other ? [userId, other] : [other, userId];
    // Idempotent and race-free for a pair: the unique key decides, the loser reads the winner.
    const { rows } = await pool.query({
      name: 'conversation-upsert',
      text: `INSERT INTO ref_conversations (id, user_a, user_b, created_at)
             VALUES ($1, $2, $3, now())
             ON CONFLICT (user_a, user_b) DO UPDATE SET user_a = EXCLUDED.user_a
             RETURNING id, user_a, user_b, created_at`,
      values: [uuid7(), a, b],
    });
    participants.set(rows[0].id, [rows[0].user_a, rows[0].user_b]);
    return conversationView(rows[0]);
  }

  async function sendMessage(socket, userId, payload) {
    const { conversationId, content, clientMessageId = null } = payload || {};
    if (typeof conversationId !== 'string' || !UUID_RE.test(conversationId)) {
      fail('VALIDATION_FAILED', 'conversationId must be a UUID');
    }
    if (typeof content !== 'string' || content.length < 1 || content.length > 2000 || content.trim() === '') {
      fail('VALIDATION_FAILED', 'content must be 1..2000 characters and not blank');
    }
    if (clientMessageId !== null && (typeof clientMessageId !== 'string' || clientMessageId.length < 1 || clientMessageId.length > 64)) {
      fail('VALIDATION_FAILED', 'clientMessageId must be 1..64 characters');
    }
    const pair = await participantsOf(conversationId);
    if (pair === null) fail('NOT_FOUND', 'conversation not found');
    if (pair[0] !== userId && pair[1] !== userId) fail('FORBIDDEN', 'not a participant');
    const recipient = pair[0] === userId ? pair[1] : pair[0];

    // One statement, one implicit transaction: the row is committed when the query returns.
    const createdAt = new Date();
    const { rows } = await pool.query({
      name: 'message-insert',
      text: `INSERT INTO ref_messages (id, conversation_id, author_id, content, created_at, client_message_id)
             VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (author_id, client_message_id) DO NOTHING
             RETURNING id`,
      values: [uuid7(), conversationId, userId, content, createdAt, clientMessageId],
    });
    if (rows.length === 0) {
      // A retried clientMessageId: answer with the original, store and deliver nothing.
      const original = await pool.query({
        name: 'message-by-client-id',
        text: `SELECT id, conversation_id, author_id, content, status, created_at, client_message_id
               FROM ref_messages WHERE author_id = $1 AND client_message_id = $2`,
        values: [userId, clientMessageId],
      });
      return messageView(original.rows[0]);
    }
    const message = {
      id: rows[0].id,
      conversationId,
      authorId: userId,
      content,
      status: 'sent',
      createdAt: createdAt.toISOString(),
      clientMessageId,
    };
    // Every device of the recipient and the sender's other devices, on every replica.
    socket.to([`user:${recipient}`, `user:${userId}`]).emit('newMessage', message);
    return message;
  }

  return { createConversation, sendMessage };
}

function acknowledged(handler) {
  return async (payload, ack) => {
    if (typeof ack !== 'function') return;
    try {
      ack({ ok: true, data: await handler(payload) });
    } catch (err) {
      if (err instanceof ClientError) {
        ack({ ok: false, error: { code: err.code, message: err.message } });
      } else {
        console.error('handler failed', err);
        ack({ ok: false, error: { code: 'INTERNAL', message: 'internal error' } });
      }
    }
  };
}

async function migrate(pool) {
  // Replicas start together: one lock makes CREATE ... IF NOT EXISTS safe against the race.
  const client = await pool.connect();
  try {
    await client.query('SELECT pg_advisory_lock(7263501)');
    await client.query(SCHEMA);
    await client.query('SELECT pg_advisory_unlock(7263501)');
  } finally {
    client.release();
  }
}

async function main() {
  const cfg = settings();
  const pool = new Pool({ connectionString: cfg.databaseUrl, max: cfg.poolSize });
  await migrate(pool);

  const pub = createClient({ url: cfg.redisUrl });
  const sub = pub.duplicate();
  await Promise.all([pub.connect(), sub.connect()]);

  const httpServer = http.createServer((req, res) => {
    if (req.url === '/healthz') {
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end('{"status":"ok"}');
    } else {
      res.writeHead(404);
      res.end();
    }
  });
  const io = new Server(httpServer, { adapter: createAdapter(pub, sub), serveClient: false });

  io.use((socket, next) => {
    const header = socket.handshake.headers.authorization || '';
    const token = (socket.handshake.auth && socket.handshake.auth.token) ||
      (header.startsWith('Bearer ') ? header.slice(7) : '');
    try {
      const claims = jwt.verify(token, cfg.jwtSecret, { algorithms: ['HS256'] });
      if (typeof claims.sub !== 'string' || claims.sub.length === 0 || claims.exp === undefined) {
        throw new Error('token needs sub and exp');
      }
      socket.data.userId = claims.sub;
      next();
    } catch (e) {
      const err = new Error('unauthorized');
      err.data = { code: 'UNAUTHORIZED', message: 'invalid or missing token' };
      next(err);
    }
  });

  const handlers = makeHandlers(pool);
  io.on('connection', (socket) => {
    const userId = socket.data.userId;
    socket.join(`user:${userId}`);
    socket.on('createConversation', acknowledged((p) => handlers.createConversation(userId, p)));
    socket.on('sendMessage', acknowledged((p) => handlers.sendMessage(socket, userId, p)));
  });

  httpServer.listen(cfg.port, cfg.host, () => {
    console.log(`reference listening on ${cfg.host}:${cfg.port} pid ${process.pid}`);
  });

  const stop = () => {
    io.close();
    Promise.allSettled([pool.end(), pub.quit(), sub.quit()]).then(() => process.exit(0));
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
