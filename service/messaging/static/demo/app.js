// The demo web client of `messaging dev` (docs/api.md, contract section 1). Plain JavaScript
// over the official socket.io-client; every text from the server goes through textContent.
"use strict";

const state = {
  me: null,
  socket: null,
  conversations: new Map(), // id -> {conversation, lastMessage, unreadCount}
  messages: new Map(), // conversationId -> Map(messageId -> Message)
  open: null,
  typing: new Map(), // conversationId -> Set(userId)
  features: {},
  typingTimer: null,
  presenceTimer: null,
};

const $ = (id) => document.getElementById(id);
const el = (tag, attrs = {}, ...children) => {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "text") node.textContent = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value);
  }
  for (const child of children) node.append(child);
  return node;
};

function call(event, payload) {
  // Every event has an ack: {ok: true, data} or {ok: false, error: {code, message}}.
  return new Promise((resolve) => {
    state.socket.timeout(10000).emit(event, payload, (err, answer) => {
      resolve(err ? { ok: false, error: { code: "UNAVAILABLE", message: "no answer" } } : answer);
    });
  });
}

async function ok(event, payload) {
  const answer = await call(event, payload);
  if (!answer.ok) {
    $("error").textContent = `${event}: ${answer.error.code} ${answer.error.message}`;
    throw new Error(answer.error.code);
  }
  return answer.data;
}

// An event the server does not have answers VALIDATION_FAILED "unknown event": features that land
// from other branches light up here without changing the page.
async function probe(event) {
  const answer = await call(event, {});
  return answer.ok || !/^unknown event/.test(answer.error.message);
}

async function showUsers() {
  const response = await fetch("/demo/users");
  const { users } = await response.json();
  for (const user of users) {
    $("users").append(el("button", { type: "button", "data-user": user, text: user, onclick: () => signIn(user) }));
  }
}

async function signIn(user) {
  const response = await fetch("/demo/token", {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ user }),
  });
  const { token } = await response.json();
  state.me = user;
  $("whoami").textContent = `signed in as ${user}`;
  const socket = io({ auth: { token }, transports: ["websocket", "polling"] });
  state.socket = socket;
  socket.on("connect", onConnect);
  socket.on("disconnect", () => ($("connection").textContent = "offline"));
  socket.on("connect_error", (err) => ($("error").textContent = `connect_error: ${JSON.stringify(err.data || err.message)}`));
  socket.on("newMessage", (message) => { store(message); onIncoming(message); });
  socket.on("messageUpdated", (message) => store(message));
  socket.on("messageDeleted", ({ conversationId, messageId, deletedAt }) => {
    const message = state.messages.get(conversationId)?.get(messageId);
    if (message) store({ ...message, content: "", deletedAt, reactions: {}, attachments: [] });
  });
  socket.on("messageReaction", ({ conversationId, messageId, reactions }) => {
    const message = state.messages.get(conversationId)?.get(messageId);
    if (message) store({ ...message, reactions });
  });
  socket.on("messageStatus", ({ conversationId, messageIds, status }) => {
    const rank = { sent: 0, delivered: 1, read: 2 };
    for (const id of messageIds) {
      const message = state.messages.get(conversationId)?.get(id);
      if (message && rank[status] > rank[message.status]) store({ ...message, status });
    }
  });
  socket.on("typing", ({ conversationId, userId, isTyping }) => {
    const who = state.typing.get(conversationId) || new Set();
    if (isTyping) who.add(userId); else who.delete(userId);
    state.typing.set(conversationId, who);
    renderTyping();
  });
  socket.on("conversationUpdated", ({ conversation }) => addConversation(conversation));
  socket.on("sessionExpired", () => ($("error").textContent = "session expired: pick the user again"));
  $("signin").hidden = true;
  $("chat").hidden = false;
}

async function onConnect() {
  $("connection").textContent = "online";
  $("error").textContent = "";
  for (const event of ["listConversations", "getMessageHistory", "editMessage", "deleteMessage", "setReaction"]) {
    state.features[event] = await probe(event);
  }
  if (state.features.listConversations) {
    const data = await ok("listConversations", { limit: 100 });
    for (const item of data.conversations) {
      state.conversations.set(item.conversation.id, item);
      if (item.lastMessage) store(item.lastMessage, false);
    }
  }
  // Catch up on everything (and, without listConversations, learn the conversations from it).
  let after;
  for (;;) {
    const data = await ok("syncMessages", after ? { after, limit: 500 } : { limit: 500 });
    for (const message of data.messages) store(message, false);
    if (!data.hasMore || data.messages.length === 0) break;
    after = data.messages[data.messages.length - 1].id;
  }
  renderConversations();
  if (state.open) openConversation(state.open);
}

function addConversation(conversation) {
  if (!state.conversations.has(conversation.id)) {
    state.conversations.set(conversation.id, { conversation, lastMessage: null, unreadCount: 0 });
  } else {
    state.conversations.get(conversation.id).conversation = conversation;
  }
  renderConversations();
}

function store(message, render = true) {
  let byId = state.messages.get(message.conversationId);
  if (!byId) state.messages.set(message.conversationId, (byId = new Map()));
  byId.set(message.id, message);
  let item = state.conversations.get(message.conversationId);
  if (!item) {
    // Known only from its messages: the other participant is the author, unless it is me.
    const others = message.authorId === state.me ? [] : [message.authorId];
    item = { conversation: { id: message.conversationId, participantIds: [state.me, ...others].sort() }, lastMessage: null, unreadCount: 0 };
    state.conversations.set(message.conversationId, item);
  }
  if (!item.lastMessage || item.lastMessage.id <= message.id) item.lastMessage = message;
  if (render) {
    renderConversations();
    if (state.open === message.conversationId) renderMessages();
  }
}

async function onIncoming(message) {
  if (message.authorId === state.me) return;
  const item = state.conversations.get(message.conversationId);
  if (state.open === message.conversationId) {
    await call("markRead", { conversationId: message.conversationId, upToMessageId: message.id });
  } else {
    await call("markDelivered", { messageIds: [message.id] });
    item.unreadCount = (item.unreadCount || 0) + 1;
    renderConversations();
  }
}

function others(conversation) {
  return (conversation.participantIds || []).filter((id) => id !== state.me);
}

function label(conversation) {
  return conversation.title || others(conversation).join(", ") || conversation.id.slice(0, 8);
}

function renderConversations() {
  const list = $("conversations");
  list.replaceChildren();
  const items = [...state.conversations.values()].sort((a, b) =>
    (b.lastMessage?.id || b.conversation.createdAt || "").localeCompare(a.lastMessage?.id || a.conversation.createdAt || ""));
  for (const item of items) {
    const li = el("li", { "data-conversation": item.conversation.id, onclick: () => openConversation(item.conversation.id) },
      el("span", { text: label(item.conversation) }));
    if (item.unreadCount) li.append(el("span", { class: "unread", "data-testid": "unread", text: String(item.unreadCount) }));
    if (item.conversation.id === state.open) li.classList.add("active");
    list.append(li);
  }
}

async function openConversation(id) {
  state.open = id;
  const item = state.conversations.get(id);
  $("title").textContent = label(item.conversation);
  $("composer").hidden = false;
  if (state.features.getMessageHistory) {
    const data = await ok("getMessageHistory", { conversationId: id, limit: 100 });
    for (const message of data.messages) store(message, false);
  }
  item.unreadCount = 0;
  renderConversations();
  renderMessages();
  renderTyping();
  const byId = state.messages.get(id);
  const theirs = [...(byId?.values() || [])].filter((m) => m.authorId !== state.me).map((m) => m.id).sort();
  if (theirs.length) await call("markRead", { conversationId: id, upToMessageId: theirs[theirs.length - 1] });
  refreshPresence();
}

function renderMessages() {
  const list = $("messages");
  list.replaceChildren();
  const byId = state.messages.get(state.open) || new Map();
  for (const message of [...byId.values()].sort((a, b) => a.id.localeCompare(b.id))) {
    const mine = message.authorId === state.me;
    const li = el("li", { "data-message": message.id, class: mine ? "mine" : "" },
      el("strong", { text: `${message.authorId}: ` }),
      el("span", { class: "content", text: message.deletedAt ? "message deleted" : message.content }));
    if (message.deletedAt) li.classList.add("deleted");
    const meta = [new Date(message.createdAt).toLocaleTimeString()];
    if (message.editedAt && !message.deletedAt) meta.push("edited");
    if (mine) meta.push(message.status);
    li.append(el("span", { class: "meta", "data-testid": "status", text: meta.join(" · ") }));
    for (const attachment of message.attachments || []) {
      if (/^https?:\/\//.test(attachment.url)) {
        li.append(el("div", {}, el("a", { href: attachment.url, rel: "noopener noreferrer", target: "_blank", text: `📎 ${attachment.fileName}` })));
      }
    }
    const reactions = Object.entries(message.reactions || {});
    if (reactions.length) {
      li.append(el("div", { class: "reactions" }, ...reactions.map(([emoji, users]) => el("span", { title: users.join(", "), text: `${emoji} ${users.length}` }))));
    }
    if (!message.deletedAt) li.append(actions(message, mine));
    list.append(li);
  }
}

function actions(message, mine) {
  const box = el("span", { class: "actions" });
  if (state.features.setReaction) {
    const active = (message.reactions?.["👍"] || []).includes(state.me);
    box.append(el("button", { type: "button", text: "👍", onclick: () => ok("setReaction", { messageId: message.id, emoji: "👍", active: !active }).then(({ reactions }) => store({ ...message, reactions })) }));
  }
  if (mine && state.features.editMessage) {
    box.append(el("button", { type: "button", text: "edit", onclick: () => {
      const content = prompt("edit message", message.content);
      if (content) ok("editMessage", { messageId: message.id, content }).then(store);
    } }));
  }
  if (mine && state.features.deleteMessage) {
    box.append(el("button", { type: "button", text: "delete", onclick: () =>
      ok("deleteMessage", { messageId: message.id }).then(({ deletedAt }) => store({ ...message, content: "", deletedAt, reactions: {}, attachments: [] })) }));
  }
  return box;
}

function renderTyping() {
  const who = [...(state.typing.get(state.open) || [])];
  $("typing").textContent = who.length ? `${who.join(", ")} ${who.length > 1 ? "are" : "is"} typing…` : "";
}

async function refreshPresence() {
  clearTimeout(state.presenceTimer);
  const item = state.conversations.get(state.open);
  const userIds = item ? others(item.conversation) : [];
  if (userIds.length) {
    const answer = await call("getPresence", { userIds });
    if (answer.ok) {
      $("presence").textContent = Object.entries(answer.data.presence)
        .map(([id, p]) => `${id}: ${p.online ? "online" : p.lastSeenAt ? `last seen ${new Date(p.lastSeenAt).toLocaleTimeString()}` : "offline"}`)
        .join(" · ");
    }
  }
  state.presenceTimer = setTimeout(refreshPresence, 10000);
}

function setTyping(isTyping) {
  if (state.open) call("typing", { conversationId: state.open, isTyping });
}

$("content").addEventListener("input", () => {
  if (!state.typingTimer) setTyping(true);
  clearTimeout(state.typingTimer);
  state.typingTimer = setTimeout(() => { state.typingTimer = null; setTyping(false); }, 3000);
});

$("composer").addEventListener("submit", async (event) => {
  event.preventDefault();
  const input = $("content");
  const content = input.value;
  if (!content.trim() || !state.open) return;
  clearTimeout(state.typingTimer);
  state.typingTimer = null;
  setTyping(false);
  const message = await ok("sendMessage", { conversationId: state.open, content, clientMessageId: clientId() });
  input.value = "";
  store(message);
});

$("new-conversation").addEventListener("submit", async (event) => {
  event.preventDefault();
  const participantId = $("participant").value.trim();
  if (!participantId) return;
  const conversation = await ok("createConversation", { participantId });
  $("participant").value = "";
  addConversation(conversation);
  openConversation(conversation.id);
});

showUsers();

function clientId() {
  // crypto.randomUUID exists only in secure contexts (https, localhost).
  return globalThis.crypto?.randomUUID?.() || `${Date.now()}-${Math.random().toString(36).slice(2)}`;
}
