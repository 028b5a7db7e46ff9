// One load-generator worker of `messaging bench --client js`: the official socket.io-client
// (Node.js) drives the load, so no figure depends on our own Python client's cost.
//
//   node js_load.mjs <node_modules dir>      (the plan: one JSON line on stdin)
//
// It mirrors messaging.bench.load.Worker and messaging.bench.accounting.Ledger: the same users,
// placement, pairs, payloads and ledger rules (lost / duplicated / misrouted), closed loop
// (--window) or open loop (--rate). It talks JSON lines on stdout: {"kind": "ready"}, then,
// after "go" on stdin, {"kind": "progress", ...} every second and {"kind": "done", ...} with
// the tally in messaging.bench.accounting.Tally's wire form (latency lists in microseconds).
import { createRequire } from "node:module";
import path from "node:path";
import readline from "node:readline";

const require = createRequire(path.join(path.resolve(process.argv[2] ?? "."), "noop.js"));
const { io } = require("socket.io-client");

const lines = readline.createInterface({ input: process.stdin });
const inbox = [];
const waiting = [];
lines.on("line", (line) => (waiting.length ? waiting.shift()(line) : inbox.push(line)));
const nextLine = () => new Promise((resolve) => (inbox.length ? resolve(inbox.shift()) : waiting.push(resolve)));
const report = (kind, data = {}) => process.stdout.write(JSON.stringify({ kind, ...data }) + "\n");
// Writes to a pipe are asynchronous: exiting at once cuts a long line (the last carries every
// latency of the run) short, so the process ends once what was written has been handed over
// (a promise that never settles: nothing after an awaited exit runs meanwhile).
const exitAfterWrites = (code) =>
  new Promise(() => process.stdout.write("", () => process.exit(code)));
const nowUs = () => Math.round(performance.now() * 1000);
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

const plan = JSON.parse(await nextLine());
const { urls, tokens, users, devices, window: windowSize, rate } = plan;

// --- the ledger (accounting.Ledger) ------------------------------------------------------
const IN_FLIGHT = 0, ACKED = 1, FAILED = 2, TIMED_OUT = 3;
const flights = new Map();
let nextSeq = 0;
const tally = {
  sent: 0, acked: 0, unanswered: 0, delivered: 0, expected_deliveries: 0, lost: 0,
  duplicated: 0, misrouted: 0, acked_in_window: 0, delivered_in_window: 0,
};
const errors = {};
const deliveryUs = [];
const ackUs = [];
let windowStart = 0, windowEnd = Number.MAX_SAFE_INTEGER;
const errorCount = () => Object.values(errors).reduce((a, b) => a + b, 0);
const inFlight = () => tally.sent - tally.acked - errorCount();
const fail = (code) => (errors[code] = (errors[code] ?? 0) + 1);

function ackError(answer) {
  if (answer && answer.ok === true) return null;
  if (answer && typeof answer.error === "object" && answer.error) return String(answer.error.code ?? "MALFORMED_ACK");
  return "MALFORMED_ACK";
}

function answered(seq, now, code) {
  const flight = flights.get(seq);
  if (!flight || flight.answer !== IN_FLIGHT) return false;
  if (code === null) {
    flight.answer = ACKED;
    tally.acked += 1;
    tally.expected_deliveries += flight.expected.size;
    if (windowStart <= now && now <= windowEnd) tally.acked_in_window += 1;
    if (flight.sentUs >= windowStart) ackUs.push(now - flight.sentUs);
    if (flight.pending.size === 0) flights.delete(seq);
  } else {
    flight.answer = FAILED;
    fail(code);
  }
  return true;
}

function delivered(seq, device, now) {
  const flight = flights.get(seq);
  if (!flight) {
    if (seq >= 0 && seq < nextSeq) tally.duplicated += 1;
    else tally.misrouted += 1;
    return;
  }
  if (flight.pending.has(device) && flight.answer !== FAILED) {
    flight.pending.delete(device);
    tally.delivered += 1;
    if (windowStart <= now && now <= windowEnd) tally.delivered_in_window += 1;
    if (flight.sentUs >= windowStart) deliveryUs.push(now - flight.sentUs);
    if (flight.pending.size === 0 && flight.answer === ACKED) flights.delete(seq);
  } else if (flight.expected.has(device) && flight.answer !== FAILED) {
    tally.duplicated += 1;
  } else {
    tally.misrouted += 1;
  }
}

// --- setup: devices, sockets, conversations (load.Worker) --------------------------------
const prefix = `${plan.run_id}.${plan.worker}.`;
let foreign = 0, disconnects = 0, skipped = 0, sending = false;
const byUser = new Map();
const allDevices = [];
for (let pair = 0; pair < users / 2; pair++) {
  if (pair % plan.workers !== plan.worker) continue;
  for (const user of [2 * pair, 2 * pair + 1]) {
    const own = [];
    for (let number = 0; number < devices; number++) {
      const device = { index: allDevices.length, user, replica: (user + number) % urls.length };
      allDevices.push(device);
      own.push(device);
    }
    byUser.set(user, own);
  }
}

function open(device) {
  return new Promise((resolve, reject) => {
    const socket = io(urls[device.replica], {
      auth: { token: tokens[String(device.user)] },
      transports: ["websocket"],
      reconnection: false,
      forceNew: true,
    });
    device.socket = socket;
    const timer = setTimeout(() => reject(new Error("connect timeout")), plan.connect_timeout_s * 1000);
    socket.once("connect", () => (clearTimeout(timer), resolve()));
    socket.once("connect_error", (e) => (clearTimeout(timer), reject(e)));
    socket.on("newMessage", (data) => {
      const now = nowUs();
      const cmid = data && data.clientMessageId;
      if (typeof cmid === "string" && cmid.startsWith(prefix)) delivered(Number(cmid.slice(prefix.length)), device.index, now);
      else foreign += 1;
    });
    socket.on("disconnect", () => (disconnects += 1));
  });
}

async function inBatches(items, size, fn) {
  for (let i = 0; i < items.length; i += size) await Promise.all(items.slice(i, i + size).map(fn));
}

const userId = (user) => `bench-${plan.run_id}-${user}`;
try {
  await inBatches(allDevices, plan.connect_concurrency, open);
} catch (e) {
  report("failed", { error: `sockets failed to connect: ${e.message}` });
  await exitAfterWrites(1);
}
const senders = [];
await inBatches([...byUser.keys()].filter((u) => u % 2 === 0), plan.connect_concurrency, async (first) => {
  const second = first + 1;
  const answer = await byUser.get(first)[0].socket
    .timeout(plan.ack_timeout_s * 1000)
    .emitWithAck("createConversation", { participantId: userId(second) });
  if (!(answer && answer.ok)) throw new Error(`createConversation failed: ${JSON.stringify(answer)}`);
  for (const [author, other] of [[first, second], [second, first]]) {
    const own = byUser.get(author);
    const expected = new Set([...byUser.get(other).map((d) => d.index), ...own.slice(1).map((d) => d.index)]);
    senders.push({ device: own[0], conversationId: answer.data.id, expected, inflight: 0 });
  }
}).catch((e) => {
  report("failed", { error: String(e.message ?? e) });
  return exitAfterWrites(1);
});
report("ready", { sockets: allDevices.length });

// --- the load ----------------------------------------------------------------------------
const padding = "x".repeat(plan.content_chars);
const senderOf = new Map();

function send(sender) {
  const now = nowUs();
  const seq = nextSeq++;
  flights.set(seq, { sentUs: now, expected: sender.expected, pending: new Set(sender.expected), answer: IN_FLIGHT });
  tally.sent += 1;
  sender.inflight += 1;
  senderOf.set(seq, sender);
  sender.device.socket.emit(
    "sendMessage",
    { conversationId: sender.conversationId, content: `${now} ${padding}`, clientMessageId: `${prefix}${seq}` },
    (answer) => acked(seq, answer),
  );
}

function acked(seq, answer) {
  const fresh = answered(seq, nowUs(), ackError(answer));
  const sender = senderOf.get(seq);
  senderOf.delete(seq);
  if (!fresh || !sender) return;
  sender.inflight -= 1;
  if (sending && rate === null) send(sender);
}

function sweep() {
  const old = nowUs() - plan.ack_timeout_s * 1e6;
  for (const [seq, flight] of flights) {
    if (flight.answer !== IN_FLIGHT || flight.sentUs >= old) continue;
    flight.answer = TIMED_OUT;
    fail("TIMEOUT");
    const sender = senderOf.get(seq);
    senderOf.delete(seq);
    if (sender) {
      sender.inflight -= 1;
      if (sending && rate === null) send(sender);
    }
  }
}

while ((await nextLine()) !== "go");
const cpuStart = process.cpuUsage();
const start = nowUs();
windowStart = start + plan.warmup_s * 1e6;
windowEnd = windowStart + plan.duration_s * 1e6;
sending = true;
const sweeper = setInterval(sweep, 500);
const progress = setInterval(
  () => report("progress", { sent: tally.sent, acked: tally.acked, delivered: tally.delivered, errors: errorCount(), in_flight: inFlight() }),
  1000,
);
if (rate === null) {
  for (const sender of senders) for (let i = 0; i < windowSize; i++) send(sender);
  await sleep((windowEnd - nowUs()) / 1000);
} else {
  let issued = 0, turn = 0;
  while (nowUs() < windowEnd) {
    const due = Math.floor((rate * (nowUs() - start)) / 1e6) - issued;
    for (let n = 0; n < due; n++) {
      issued += 1;
      let sent = false;
      for (let tries = 0; tries < senders.length && !sent; tries++) {
        const sender = senders[turn];
        turn = (turn + 1) % senders.length;
        if (sender.inflight < windowSize) (send(sender), (sent = true));
      }
      if (!sent) skipped += 1;
    }
    await sleep(2);
  }
}
sending = false;
const undelivered = () => [...flights.values()].reduce((n, f) => n + (f.answer === ACKED ? f.pending.size : 0), 0);
for (let t = 0; t < Math.max(1, plan.drain_s / 0.05); t++) {
  if (!(inFlight() || undelivered())) break;
  await sleep(50);
}
clearInterval(sweeper);
clearInterval(progress);
const cpu = process.cpuUsage(cpuStart);
for (const flight of flights.values()) {
  if (flight.answer === ACKED) tally.lost += flight.pending.size;
  else if (flight.answer === IN_FLIGHT) tally.unanswered += 1;
}
for (const device of allDevices) {
  device.socket.off("disconnect");
  device.socket.close();
}
report("done", {
  tally: { counters: tally, errors, delivery_us: deliveryUs, ack_us: ackUs },
  cpu_seconds: (cpu.user + cpu.system) / 1e6,
  sockets: allDevices.length,
  skipped,
  foreign,
  disconnects,
});
await exitAfterWrites(0);
