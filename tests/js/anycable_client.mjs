// Runs an @anycable/web client (see anycable_watch.js) in Node against a fanout edge and
// reports what it sees as JSON lines on stdout, until its stdin closes.
//
// usage: node anycable_client.mjs <ws://host:port/cable?partner=...> <pubsub_token>
import { createInterface } from "node:readline";
import { createCable } from "@anycable/web";
import WebSocket from "ws";
import { watch } from "./anycable_watch.js";

const [url, pubsubToken] = process.argv.slice(2);
if (!url || !pubsubToken) {
  console.error("usage: node anycable_client.mjs <url> <pubsub_token>");
  process.exit(2);
}
const emit = (event) => process.stdout.write(JSON.stringify(event) + "\n");
const cable = watch(createCable, url, pubsubToken, emit, {
  websocketImplementation: WebSocket,
});
for await (const _ of createInterface({ input: process.stdin })) {
  // No commands: the client runs by itself.
}
cable.disconnect();
process.exit(0);
