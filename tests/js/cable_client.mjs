// Drives the official @rails/actioncable client (the npm package, unmodified) against a
// fanout edge and reports what the application would see, one JSON object per line on
// stdout. It runs until its stdin closes.
//
// usage: node cable_client.mjs <ws://host:port/cable?jwt=...&partner=...>[ <url>...] [--channel NAME]
//
// Tokens are single-use, so an application gives createConsumer a function that returns
// a URL with a fresh token for every connection; given several URLs, this script does
// that, one URL per connection (the last one again once they run out).
import { createConsumer, adapters, logger } from "@rails/actioncable";
import WebSocket from "ws";

// Node has no browser globals; the client needs a WebSocket constructor and the bits
// of `document` its connection monitor reads on page visibility changes.
adapters.WebSocket = WebSocket;
globalThis.addEventListener ??= () => {};
globalThis.removeEventListener ??= () => {};
globalThis.document ??= { visibilityState: "visible" };
logger.enabled = process.env.ACTIONCABLE_DEBUG === "1";

const args = process.argv.slice(2);
const channelFlag = args.indexOf("--channel");
const channel = channelFlag >= 0 ? args[channelFlag + 1] : "PartnerChannel";
const urls = channelFlag >= 0 ? args.slice(0, channelFlag) : args;
if (urls.length === 0) {
  console.error("usage: node cable_client.mjs <url>... [--channel NAME]");
  process.exit(2);
}
let connects = 0;
const url = () => urls[Math.min(connects++, urls.length - 1)];

const emit = (event) => process.stdout.write(JSON.stringify(event) + "\n");
const consumer = createConsumer(url);
consumer.subscriptions.create(
  { channel },
  {
    // `reconnected` is true when the client's connection monitor reopened the
    // connection after losing it.
    connected({ reconnected }) {
      emit({ event: "connected", protocol: consumer.connection.getProtocol(), reconnected });
    },
    // `willAttemptReconnect` is whether the client's connection monitor still runs:
    // false once the server said `reconnect: false`.
    disconnected(details) {
      emit({ event: "disconnected", ...details });
    },
    rejected() {
      emit({ event: "rejected" });
    },
    received(data) {
      emit({ event: "received", data });
    },
  },
);

process.stdin.on("end", () => {
  consumer.disconnect();
  process.exit(0);
});
process.stdin.resume();
