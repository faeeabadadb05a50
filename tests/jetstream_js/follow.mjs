// Follows /subscribe with @skyware/jetstream and prints each event it emits as a JSON line.
// Usage: node follow.mjs '{"endpoint": "...", "wantedCollections": [...], "cursor": 1, "count": N}'
import { Jetstream } from "@skyware/jetstream";
import WebSocket from "ws";

const options = JSON.parse(process.argv[2]);
const jetstream = new Jetstream({
  ws: WebSocket,
  endpoint: options.endpoint,
  wantedCollections: options.wantedCollections,
  wantedDids: options.wantedDids,
  cursor: options.cursor,
});
let received = 0;
const print = (event) => {
  process.stdout.write(JSON.stringify(event) + "\n");
  received += 1;
  if (received >= options.count) {
    jetstream.close();
    process.exit(0);
  }
};
jetstream.on("commit", print);
jetstream.on("identity", print);
jetstream.on("account", print);
jetstream.on("error", (error) => process.stderr.write(`error: ${error}\n`));
jetstream.on("open", () => process.stderr.write("open\n"));
jetstream.start();
