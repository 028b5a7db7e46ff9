// The README's TypeScript quick start as a program: two users over the official socket.io-client,
// typed by the generated contract (clients/typescript/messaging-events.d.ts). tsc type-checks it
// (strict) and tests/service/test_typed_client.py runs it against a live service.
//   node dist/typed_client.js URL ALICE_TOKEN BOB_TOKEN BOB_USER_ID
import { io, type Socket } from "socket.io-client";
import type {
  ClientToServerEvents,
  Message,
  ServerToClientEvents,
} from "../../clients/typescript/messaging-events.js";

declare const process: { argv: string[]; exit(code: number): never };

type Client = Socket<ServerToClientEvents, ClientToServerEvents>;

function connect(url: string, token: string): Promise<Client> {
  const socket: Client = io(url, { auth: { token }, transports: ["websocket"] });
  return new Promise((resolve, reject) => {
    socket.on("connect", () => resolve(socket));
    socket.on("connect_error", (err) => reject(err));
  });
}

async function main(): Promise<void> {
  const [url, aliceToken, bobToken, bobId] = process.argv.slice(2);
  if (!url || !aliceToken || !bobToken || !bobId) throw new Error("usage: URL ALICE BOB BOB_ID");
  const alice = await connect(url, aliceToken);
  const bob = await connect(url, bobToken);
  const received = new Promise<Message>((resolve) => bob.on("newMessage", resolve));

  const created = await alice.emitWithAck("createConversation", { participantId: bobId });
  if (!created.ok) throw new Error(`createConversation: ${created.error.code}`);
  const sent = await alice.emitWithAck("sendMessage", {
    conversationId: created.data.id,
    content: "typed hello",
    clientMessageId: "ts-1",
  });
  if (!sent.ok) throw new Error(`sendMessage: ${sent.error.code}`);
  const message = await received;
  const read = await bob.emitWithAck("markRead", {
    conversationId: message.conversationId,
    upToMessageId: message.id,
  });
  const refused = await alice.emitWithAck("sendMessage", {
    conversationId: created.data.id,
    content: " ",
  });
  const code = refused.ok ? null : refused.error.code;
  console.log(
    JSON.stringify({
      conversation: created.data,
      sent: sent.data,
      received: message,
      updated: read.ok ? read.data.updated : null,
      refused: code,
    }),
  );
  alice.disconnect();
  bob.disconnect();
}

main().catch((err: unknown) => {
  console.error(err);
  process.exit(1);
});
