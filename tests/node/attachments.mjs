// An attachment round trip as a browser or app makes it: the official socket.io-client for the
// events, fetch() for the presigned PUT and GET straight to the store. Prints one JSON line.
//
//   node attachments.mjs <url> <aliceToken> <bobToken> <bobId> <sizeBytes>
import { createHash, randomBytes } from "node:crypto";
import { io } from "socket.io-client";

const [url, aliceToken, bobToken, bobId, size] = process.argv.slice(2);
const sha256 = (bytes) => createHash("sha256").update(bytes).digest("hex");

function connect(token) {
  return io(url, { auth: { token }, transports: ["websocket"], reconnection: false, forceNew: true });
}

function once(socket, event, timeoutMs = 10000) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no ${event} within ${timeoutMs} ms`)), timeoutMs);
    socket.once(event, (data) => {
      clearTimeout(timer);
      resolve(data);
    });
  });
}

const alice = connect(aliceToken);
const bob = connect(bobToken);
await Promise.all([once(alice, "connect"), once(bob, "connect")]);
const call = (socket, event, payload) => socket.timeout(10000).emitWithAck(event, payload);

const created = await call(alice, "createConversation", { participantId: bobId });
const conversationId = created.data.id;
const bytes = randomBytes(Number(size));
const upload = await call(alice, "createUpload", {
  conversationId,
  fileName: "from node.mp4",
  contentType: "video/mp4",
  sizeBytes: bytes.length,
});
const put = await fetch(upload.data.uploadUrl, {
  method: upload.data.uploadMethod,
  headers: upload.data.uploadHeaders,
  body: bytes,
});
const delivered = once(bob, "newMessage");
const sent = await call(alice, "sendMessage", {
  conversationId,
  attachmentIds: [upload.data.attachmentId],
});
const received = await delivered;
const download = await fetch(received.attachments[0].url);
const downloaded = Buffer.from(await download.arrayBuffer());
console.log(
  JSON.stringify({
    putStatus: put.status,
    sentOk: sent.ok,
    attachment: received.attachments[0],
    getStatus: download.status,
    getType: download.headers.get("content-type"),
    uploadedSha256: sha256(bytes),
    downloadedSha256: sha256(downloaded),
  }),
);
alice.close();
bob.close();
