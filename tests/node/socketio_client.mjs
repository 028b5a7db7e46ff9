// The official socket.io-client, driven by the Python tests. Prints one JSON line of results.
//
//   node socketio_client.mjs roundtrip <url> <transport> <aliceToken> <bobToken> <bobId>
//   node socketio_client.mjs changes <url> <transport> <aliceToken> <bobToken> <bobId>
//     (edit, react, delete, list and history: the acks and the events bob's device gets)
//   node socketio_client.mjs refused <url> <transport> <token>
//   node socketio_client.mjs hold <url> <count> <token>...   (until stdin closes; reports reconnects)
//   node socketio_client.mjs expire <url> <transport> <token> <watchMs>
//     (reconnection on; waits for the session to end, then watches watchMs for reconnects)
import { io } from "socket.io-client";

const [scenario, url, ...args] = process.argv.slice(2);
const print = (result) => console.log(JSON.stringify(result));

function connect(token, transports, extra = {}) {
  return io(url, { auth: { token }, transports, reconnection: false, forceNew: true, ...extra });
}

function once(socket, event, timeoutMs = 5000) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no ${event} within ${timeoutMs} ms`)), timeoutMs);
    socket.once(event, (data) => {
      clearTimeout(timer);
      resolve(data);
    });
  });
}

async function roundtrip([transport, aliceToken, bobToken, bobId]) {
  const transports = [transport];
  const alice = connect(aliceToken, transports);
  const bob = connect(bobToken, transports);
  await Promise.all([once(alice, "connect"), once(bob, "connect")]);
  const created = await alice.timeout(5000).emitWithAck("createConversation", { participantId: bobId });
  const conversationId = created.data.id;
  const delivered = once(bob, "newMessage");
  const sent = await alice
    .timeout(5000)
    .emitWithAck("sendMessage", { conversationId, content: "from the official JS client", clientMessageId: "js-1" });
  const received = await delivered;
  const status = once(alice, "messageStatus");
  const marked = await bob.timeout(5000).emitWithAck("markDelivered", { messageIds: [sent.data.id] });
  const statusEvent = await status;
  const invalid = await alice.timeout(5000).emitWithAck("sendMessage", { conversationId, content: "" });
  const result = {
    transport: alice.io.engine.transport.name,
    created,
    sent,
    received,
    marked,
    statusEvent,
    invalid,
    stillConnected: alice.connected,
  };
  alice.close();
  bob.close();
  return result;
}

async function changes([transport, aliceToken, bobToken, bobId]) {
  const transports = [transport];
  const alice = connect(aliceToken, transports);
  const bob = connect(bobToken, transports);
  await Promise.all([once(alice, "connect"), once(bob, "connect")]);
  const call = (socket, event, payload) => socket.timeout(5000).emitWithAck(event, payload);
  const created = await call(alice, "createConversation", { participantId: bobId });
  const conversationId = created.data.id;
  const delivered = once(bob, "newMessage");
  const sent = await call(alice, "sendMessage", { conversationId, content: "typo" });
  await delivered;
  const updatedEvent = once(bob, "messageUpdated");
  const edited = await call(alice, "editMessage", { messageId: sent.data.id, content: "fixed" });
  const updated = await updatedEvent;
  const reactionEvent = once(alice, "messageReaction");
  const reacted = await call(bob, "setReaction", { messageId: sent.data.id, emoji: "👍", active: true });
  const reaction = await reactionEvent;
  const listed = await call(bob, "listConversations", {});
  const deletedEvent = once(bob, "messageDeleted");
  const deleted = await call(alice, "deleteMessage", { messageId: sent.data.id });
  const deletion = await deletedEvent;
  const history = await call(bob, "getMessageHistory", { conversationId });
  const forbidden = await call(bob, "deleteMessage", { messageId: sent.data.id });
  const result = { edited, updated, reacted, reaction, listed, deleted, deletion, history, forbidden };
  alice.close();
  bob.close();
  return result;
}

async function refused([transport, token]) {
  const socket = connect(token, [transport]);
  const error = await once(socket, "connect_error");
  socket.close();
  return { message: error.message, data: error.data };
}

async function hold([count, ...tokens]) {
  const sockets = [];
  const stats = Array.from({ length: Number(count) }, () => ({ connects: 0, disconnects: [] }));
  for (let i = 0; i < Number(count); i++) {
    const socket = connect(tokens[i % tokens.length], ["websocket"], {
      reconnection: true,
      reconnectionDelay: 200,
      reconnectionDelayMax: 1000,
    });
    socket.on("connect", () => (stats[i].connects += 1));
    socket.on("disconnect", (reason) => stats[i].disconnects.push(reason));
    sockets.push(socket);
  }
  await Promise.all(sockets.map((s) => (s.connected ? null : once(s, "connect", 10000))));
  console.log(JSON.stringify({ ready: true }));
  await new Promise((resolve) => {
    process.stdin.on("end", resolve);
    process.stdin.resume();
  });
  const result = { connected: sockets.filter((s) => s.connected).length, stats: structuredClone(stats) };
  sockets.forEach((s) => s.close());
  return result;
}

async function expire([transport, token, watchMs]) {
  const socket = connect(token, [transport], { reconnection: true, reconnectionDelay: 100, reconnectionDelayMax: 200 });
  const seen = { connects: 0, sessionExpired: [], disconnects: [], order: [] };
  socket.on("connect", () => {
    seen.connects += 1;
    seen.order.push("connect");
  });
  socket.on("sessionExpired", (data) => {
    seen.sessionExpired.push(data);
    seen.order.push("sessionExpired");
  });
  socket.on("disconnect", (reason) => {
    seen.disconnects.push(reason);
    seen.order.push("disconnect");
  });
  await once(socket, "disconnect", 30000);
  await new Promise((resolve) => setTimeout(resolve, Number(watchMs)));
  const result = { ...seen, connectedAtEnd: socket.connected, active: socket.active };
  socket.close();
  return result;
}

const scenarios = { roundtrip, changes, refused, hold, expire };
try {
  print(await scenarios[scenario](args));
  process.exit(0);
} catch (error) {
  print({ error: String(error) });
  process.exit(1);
}
