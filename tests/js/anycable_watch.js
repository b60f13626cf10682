// The application side of an @anycable/web client (the npm package, unmodified), shared
// by the Node script (anycable_client.mjs) and the browser page (anycable_page.html):
// it speaks AnyCable's extended protocol (actioncable-v1-ext-json), subscribes to
// RoomChannel with a pubsub_token and reports what the application sees, one object
// per call of `emit`:
//   {"event":"connect","reconnect":..,"restored":..}      the cable (re)connected
//   {"event":"disconnect"}                                 the cable lost its connection
//   {"event":"subscribed","reconnect":..,"restored":..}  the channel (re)subscribed
//   {"event":"message","name":..,"data":..,"stream":..,"epoch":..,"offset":..}
//   {"event":"info","type":..}      history_received, history_not_found, restored, ...
// The client reconnects, restores its session (sid) and asks for the history it missed
// by itself: the script does nothing of the kind.
export function watch(createCable, url, pubsubToken, emit, options = {}) {
  const cable = createCable(url, {
    protocol: "actioncable-v1-ext-json",
    logLevel: "error",
    ...options,
  });
  cable.on("connect", ({ reconnect, restored }) =>
    emit({ event: "connect", reconnect, restored }),
  );
  cable.on("disconnect", () => emit({ event: "disconnect" }));
  const channel = cable.subscribeTo("RoomChannel", { pubsub_token: pubsubToken });
  channel.on("connect", ({ reconnect, restored }) =>
    emit({ event: "subscribed", reconnect, restored }),
  );
  channel.on("message", (message, meta) =>
    emit({
      event: "message",
      name: message.event,
      data: message.data,
      stream: meta?.stream ?? null,
      epoch: meta?.epoch ?? null,
      offset: meta?.offset ?? null,
    }),
  );
  channel.on("info", (info) => emit({ event: "info", type: info.type }));
  return cable;
}
