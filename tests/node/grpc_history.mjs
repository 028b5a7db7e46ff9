// Reads a conversation's whole history with @grpc/grpc-js, loading the service from protos/.
// Usage: node grpc_history.mjs <target> <jwt> <conversationId> <pageSize>
// Prints one JSON object: {"pages": n, "ids": [...newest first...], "health": "SERVING"}.
import path from "node:path";
import { fileURLToPath } from "node:url";
import grpc from "@grpc/grpc-js";
import protoLoader from "@grpc/proto-loader";

const [target, token, conversationId, pageSize] = process.argv.slice(2);
const protos = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../../protos");
const definition = protoLoader.loadSync("messaging/v1/messaging.proto", {
  includeDirs: [protos],
  keepCase: true,
  longs: String,
  enums: String,
  defaults: true,
});
const { messaging } = grpc.loadPackageDefinition(definition);
const client = new messaging.v1.MessagingService(target, grpc.credentials.createInsecure());
const metadata = new grpc.Metadata();
metadata.set("authorization", `Bearer ${token}`);

function page(pageToken) {
  return new Promise((resolve, reject) => {
    client.GetMessageHistory(
      { conversation_id: conversationId, page_size: Number(pageSize), page_token: pageToken },
      metadata,
      { deadline: Date.now() + 5000 },
      (error, reply) => (error ? reject(error) : resolve(reply)),
    );
  });
}

try {
  const ids = [];
  const statuses = new Set();
  let token = "";
  let pages = 0;
  do {
    const reply = await page(token);
    pages += 1;
    for (const message of reply.messages) {
      ids.push(message.id);
      statuses.add(message.status);
    }
    token = reply.next_page_token;
  } while (token);
  console.log(JSON.stringify({ pages, ids, statuses: [...statuses] }));
} catch (error) {
  console.log(JSON.stringify({ error: { code: error.code, details: error.details } }));
} finally {
  client.close();
}
