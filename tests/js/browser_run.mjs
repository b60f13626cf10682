// Opens a page in headless Chromium (Debian's, driven by playwright-core) and relays what
// the page reports through window.fanoutReport as JSON lines on stdout, along with the
// page's uncaught errors and console errors. Reads JSON commands on stdin, one a line:
//   {"realtime_send": <frame>}   the page sends <frame> on its /realtime socket
// and closes the browser and exits when stdin closes.
//
// usage: node browser_run.mjs <page url>
// CHROMIUM names the browser binary (default /usr/bin/chromium).
import { createInterface } from "node:readline";
import { chromium } from "playwright-core";

const [pageUrl] = process.argv.slice(2);
if (!pageUrl) {
  console.error("usage: node browser_run.mjs <page url>");
  process.exit(2);
}

const emit = (event) => process.stdout.write(JSON.stringify(event) + "\n");

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
  // --no-sandbox: the tests run as root. The rest keep Chromium from reaching for the
  // network (this machine has none besides loopback).
  args: [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
  ],
});
const page = await browser.newPage();
await page.exposeFunction("fanoutReport", (json) => {
  // Parsed and written again so that one report is always exactly one line.
  emit(JSON.parse(json));
});
page.on("pageerror", (error) => emit({ source: "page", event: "error", message: String(error) }));
page.on("console", (message) => {
  if (message.type() === "error") {
    emit({ source: "page", event: "console_error", text: message.text() });
  }
});
await page.goto(pageUrl);

const commands = createInterface({ input: process.stdin });
for await (const line of commands) {
  const command = JSON.parse(line);
  if (command.realtime_send) {
    await page.evaluate((frame) => window.realtimeSend(frame), command.realtime_send);
  } else {
    console.error("unknown command:", line);
    process.exitCode = 2;
  }
}
await browser.close();
