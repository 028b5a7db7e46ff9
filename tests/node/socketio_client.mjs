// The official socket.io-client, driven by the Python tests. Prints one JSON line of results.
//
//   node socketio_client.mjs roundtrip <url> <transport> <aliceToken> <bobToken> <bobId>
//   node socketio_client.mjs refused <url> <transport> <token>
//   node socketio_client.mjs group <url> <transport> <aliceToken> <bobToken> <bobId> <carolId>
//   node socketio_client.mjs hold <url> <count> <token>...   (until stdin closes; reports reconnects)
//   node socketio_client.mjs expire <url> <transport> <token> <watchMs>
//     (reconnection on; waits for the session to end, then watches watchMs for reconnects)
//   node socketio_client.mjs moderation <url> <transport> <aliceToken> <bobToken> <bobId>
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

async function group([transport, aliceToken, bobToken, bobId, carolId]) {
  const transports = [transport];
  const alice = connect(aliceToken, transports);
  const bob = connect(bobToken, transports);
  await Promise.all([once(alice, "connect"), once(bob, "connect")]);
  const told = once(bob, "conversationUpdated");
  const created = await alice
    .timeout(5000)
    .emitWithAck("createConversation", { participantIds: [bobId, carolId], title: "From JS" });
  const createdEvent = await told;
  const conversationId = created.data.id;
  const delivered = once(bob, "newMessage");
  const sent = await alice.timeout(5000).emitWithAck("sendMessage", { conversationId, content: "to the group" });
  const received = await delivered;
  const status = once(alice, "messageStatus");
  const read = await bob.timeout(5000).emitWithAck("markRead", { conversationId, upToMessageId: sent.data.id });
  const statusEvent = await status;
  const receipts = await alice.timeout(5000).emitWithAck("getReceipts", { messageId: sent.data.id });
  const left = await bob.timeout(5000).emitWithAck("leaveConversation", { conversationId });
  const afterLeaving = await bob.timeout(5000).emitWithAck("sendMessage", { conversationId, content: "x" });
  alice.close();
  bob.close();
  return { created, createdEvent, sent, received, read, statusEvent, receipts, left, afterLeaving };
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

// Blocking and reports with the official client: alice reports bob's message, blocks him, and
// his next send is refused; the ack shapes are what browsers and apps will parse.
async function moderation([transport, aliceToken, bobToken, bobId]) {
  const transports = [transport];
  const alice = connect(aliceToken, transports);
  const bob = connect(bobToken, transports);
  await Promise.all([once(alice, "connect"), once(bob, "connect")]);
  const ack = (socket, event, payload) => socket.timeout(5000).emitWithAck(event, payload);
  const created = await ack(alice, "createConversation", { participantId: bobId });
  const conversationId = created.data.id;
  const sent = await ack(bob, "sendMessage", { conversationId, content: "spam spam spam" });
  const reported = await ack(alice, "reportMessage", { messageId: sent.data.id, reason: "spam", note: "js" });
  const blocked = await ack(alice, "blockUser", { userId: bobId });
  const listed = await ack(alice, "listBlocked", {});
  const refused = await ack(bob, "sendMessage", { conversationId, content: "after the block" });
  const unblocked = await ack(alice, "unblockUser", { userId: bobId });
  alice.disconnect();
  bob.disconnect();
  return { reported, blocked, listed, refused, unblocked };
}

const scenarios = { roundtrip, group, changes, refused, hold, expire, moderation };
try {
  print(await scenarios[scenario](args));
  process.exit(0);
} catch (error) {
  print({ error: String(error) });
  process.exit(1);
}
