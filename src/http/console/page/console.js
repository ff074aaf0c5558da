// The debug console's page: sign in, follow one app's live feed (Server-Sent Events), filter
// it by channel, event and kind, and trigger events. No dependencies; works offline.
"use strict";

(function () {
  const MAX_ROWS = 2000;
  const $ = (id) => document.getElementById(id);
  // Every URL is relative to the page, so the console works under any path prefix.
  const base = location.pathname.replace(/[^/]*$/, "");
  let appId = null;
  let source = null;
  let paused = false;
  let open = 0;
  let entries = 0;
  let skipped = 0;

  function status(text, cls) {
    $("status").textContent = text;
    $("status").className = cls || "";
  }

  function showConsole(on) {
    $("signin").hidden = on;
    $("console").hidden = !on;
  }

  async function post(path, body, method) {
    return fetch(base + path, {
      method: method || "POST",
      headers: { "content-type": "application/json" },
      credentials: "same-origin",
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  }

  async function message(resp) {
    try {
      const j = await resp.json();
      return j.error || resp.statusText;
    } catch (_) {
      return resp.statusText;
    }
  }

  $("signin-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    const id = $("app-id").value.trim();
    const resp = await post("session", { app_id: id, token: $("token").value });
    $("token").value = "";
    if (resp.status !== 204) {
      $("signin-error").hidden = false;
      $("signin-error").textContent = "Refused (" + resp.status + "): " + (await message(resp));
      return;
    }
    $("signin-error").hidden = true;
    appId = id;
    $("app-name").textContent = id;
    showConsole(true);
    follow();
  });

  $("signout").addEventListener("click", async () => {
    if (source) source.close();
    source = null;
    await post("session", undefined, "DELETE");
    showConsole(false);
    status("signed out");
  });

  $("pause").addEventListener("click", () => {
    paused = !paused;
    $("pause").textContent = paused ? "Resume" : "Pause";
  });

  $("clear").addEventListener("click", () => {
    $("log-body").textContent = "";
  });

  function follow() {
    if (source) source.close();
    status("connecting…");
    source = new EventSource(base + "apps/" + encodeURIComponent(appId) + "/stream");
    source.onopen = () => status("live", "live");
    source.onerror = () => status("disconnected, retrying…", "down");
    source.onmessage = (m) => {
      let r;
      try {
        r = JSON.parse(m.data);
      } catch (_) {
        return;
      }
      receive(r);
    };
  }

  function receive(r) {
    switch (r.kind) {
      case "ready":
        status("live", "live");
        return;
      case "connection_opened":
        open += 1;
        break;
      case "connection_closed":
        open = Math.max(0, open - 1);
        break;
      case "skipped":
        skipped += r.count;
        $("sampling").hidden = false;
        $("sampling").textContent =
          "Sampling: " + skipped + " entries skipped (more than the console shows per second)";
        break;
    }
    $("open-count").textContent = String(open);
    if (paused && r.kind !== "skipped") return;
    entries += 1;
    $("entry-count").textContent = String(entries);
    addRow(r);
  }

  function details(r) {
    switch (r.kind) {
      case "connection_opened":
        return "socket " + r.socket_id + " (" + r.transport + ")";
      case "connection_closed":
        return "socket " + r.socket_id + ", code " + r.code;
      case "subscribed":
      case "unsubscribed":
        return "socket " + r.socket_id;
      case "member_added":
      case "member_removed":
        return "user " + r.user_id;
      case "api_event":
        return (r.source === "console" ? "[console] " : "") + r.data + (r.data_truncated ? " …" : "");
      case "client_event":
        return "from " + r.socket_id + (r.user_id ? " (user " + r.user_id + ")" : "") + ": " +
          r.data + (r.data_truncated ? " …" : "");
      case "webhook":
        return r.outcome + " to " + r.host + (r.status ? " (" + r.status + ")" : "") +
          ", " + r.attempts + " attempt(s)" + (r.failure ? ": " + r.failure : "") +
          " [" + r.events.join(", ") + "]";
      case "skipped":
        return r.count + " entries skipped";
      default:
        return JSON.stringify(r);
    }
  }

  function group(kind) {
    if (kind.startsWith("connection_")) return "connection";
    if (kind === "subscribed" || kind === "unsubscribed") return "subscription";
    if (kind.startsWith("member_")) return "member";
    return kind;
  }

  function eventName(r) {
    if (r.event) return r.event;
    if (r.kind === "webhook") return r.events.map((e) => e.split(":")[0]).join(" ");
    return "";
  }

  function visible(row) {
    const ch = $("filter-channel").value.trim();
    const ev = $("filter-event").value.trim();
    const kind = $("filter-kind").value;
    if (row.dataset.kind === "skipped") return true;
    if (kind && row.dataset.group !== kind) return false;
    if (ch && !row.dataset.channel.includes(ch)) return false;
    if (ev && !row.dataset.event.includes(ev)) return false;
    return true;
  }

  function addRow(r) {
    const tr = document.createElement("tr");
    const channel = r.channel || (r.kind === "webhook" ? r.events.map((e) => e.split(":").slice(1).join(":")).join(" ") : "");
    tr.className = "kind-" + r.kind + (r.kind === "webhook" && r.outcome !== "delivered" ? " failed" : "");
    tr.dataset.kind = r.kind;
    tr.dataset.group = group(r.kind);
    tr.dataset.channel = channel;
    tr.dataset.event = eventName(r);
    const when = r.time_ms ? new Date(r.time_ms).toISOString().slice(11, 23) : "";
    for (const text of [when, r.kind, channel, tr.dataset.event, details(r)]) {
      const td = document.createElement("td");
      td.textContent = text;
      tr.appendChild(td);
    }
    tr.lastChild.className = "details";
    if (!visible(tr)) tr.classList.add("hidden");
    const body = $("log-body");
    body.insertBefore(tr, body.firstChild);
    while (body.childElementCount > MAX_ROWS) body.removeChild(body.lastChild);
  }

  function refilter() {
    for (const tr of $("log-body").children) tr.classList.toggle("hidden", !visible(tr));
  }
  for (const id of ["filter-channel", "filter-event", "filter-kind"]) {
    $(id).addEventListener("input", refilter);
  }

  $("creator-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    const resp = await post("apps/" + encodeURIComponent(appId) + "/events", {
      channel: $("new-channel").value.trim(),
      name: $("new-event").value.trim(),
      data: $("new-data").value,
    });
    $("creator-result").textContent = resp.ok ? "sent" : "refused (" + resp.status + "): " + (await message(resp));
  });
})();
