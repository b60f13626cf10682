// Drives the official @rails/actioncable client (the npm package, unmodified) against a
// fanout edge and reports what the application would see, one JSON object per line on
// stdout, each naming in `channel` the channel of the subscription it concerns. It runs
// until its stdin closes.
//
// usage: node cable_client.mjs <ws://host:port/cable?...>[ <url>...] [--subscribe PARAMS]...
//
// PARAMS: a subscription's params as JSON, as an application passes them to
// `consumer.subscriptions.create` (`{"channel":"RoomChannel","pubsub_token":"..."}`); one
// subscription each, made in order; `{"channel":"PartnerChannel"}` if none is given.
//
// Tokens in the URL are single-use, so an application gives createConsumer a function
// that returns a URL with a fresh token for every connection; given several URLs, this
// script does that, one URL per connection (the last one again once they run out).
import { createConsumer, adapters, logger } from "@rails/actioncable";
import WebSocket from "ws";

// Node has no browser globals; the client needs a WebSocket constructor and the bits
// of `document` its connection monitor reads on page visibility changes.
adapters.WebSocket = WebSocket;
globalThis.addEventListener ??= () => {};
globalThis.removeEventListener ??= () => {};
globalThis.document ??= { visibilityState: "visible" };
logger.enabled = process.env.ACTIONCABLE_DEBUG === "1";

const urls = [];
const subscriptions = [];
const args = process.argv.slice(2);
for (let index = 0; index < args.length; index += 1) {
  if (args[index] === "--subscribe") {
    index += 1;
    subscriptions.push(JSON.parse(args[index]));
  } else {
    urls.push(args[index]);
  }
}
if (urls.length === 0) {
  console.error("usage: node cable_client.mjs <url>... [--subscribe PARAMS]...");
  process.exit(2);
}
if (subscriptions.length === 0) {
  subscriptions.push({ channel: "PartnerChannel" });
}
let connects = 0;
const url = () => urls[Math.min(connects++, urls.length - 1)];

const emit = (event) => process.stdout.write(JSON.stringify(event) + "\n");
const consumer = createConsumer(url);
for (const params of subscriptions) {
  const { channel } = params;
  consumer.subscriptions.create(params, {
    // `reconnected` is true when the client's connection monitor reopened the
    // connection after losing it.
    connected({ reconnected }) {
      emit({ channel, event: "connected", protocol: consumer.connection.getProtocol(), reconnected });
    },
    // `willAttemptReconnect` is whether the client's connection monitor still runs:
    // false once the server said `reconnect: false`.
    disconnected(details) {
      emit({ channel, event: "disconnected", ...details });
    },
    rejected() {
      emit({ channel, event: "rejected" });
    },
    received(data) {
      emit({ channel, event: "received", data });
    },
  });
}

process.stdin.on("end", () => {
  consumer.disconnect();
  process.exit(0);
});
process.stdin.resume();
