// Receives webhooks on 127.0.0.1 and checks each one with the official Pusher Node SDK.
//
// usage: node validate.mjs <port> [app_id] [key] [secret]
//   port 0 picks a free port. The credentials default to the ones of Pusher's own docs
//   (app_id 3, key 278d425bdf160c739803, secret 7ad3773142a6692b25b8).
//
// stderr: one line "listening on 127.0.0.1:<port>" once the socket is bound.
// stdout: one JSON line per request:
//   {"valid":<isValid()>,"fresh":<time_ms within 300 s>,"content_type":"...","events":[...]}
// Each request is answered 200 when valid and 401 otherwise.
import http from "node:http";
import Pusher from "pusher";

const [portArg, appId = "3", key = "278d425bdf160c739803", secret = "7ad3773142a6692b25b8"] =
  process.argv.slice(2);
const port = Number.parseInt(portArg ?? "", 10);
if (!Number.isInteger(port) || port < 0 || port > 65535) {
  process.stderr.write("usage: node validate.mjs <port> [app_id] [key] [secret]\n");
  process.exit(2);
}

const pusher = new Pusher({ appId, key, secret });

const server = http.createServer((req, res) => {
  const chunks = [];
  req.on("data", (chunk) => chunks.push(chunk));
  req.on("end", () => {
    const rawBody = Buffer.concat(chunks).toString("utf8");
    const webhook = pusher.webhook({ headers: req.headers, rawBody });
    const valid = webhook.isValid();
    let events = null;
    let fresh = false;
    if (valid) {
      events = webhook.getEvents();
      fresh = Math.abs(Date.now() - webhook.getTime().getTime()) <= 300000;
    }
    const line = {
      valid,
      fresh,
      method: req.method,
      content_type: req.headers["content-type"] ?? null,
      events,
    };
    process.stdout.write(JSON.stringify(line) + "\n");
    res.writeHead(valid ? 200 : 401, { "content-type": "application/json" });
    res.end("{}");
  });
});

server.listen(port, "127.0.0.1", () => {
  process.stderr.write(`listening on 127.0.0.1:${server.address().port}\n`);
});

process.on("SIGTERM", () => server.close(() => process.exit(0)));
