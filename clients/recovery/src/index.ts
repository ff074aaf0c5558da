// Resume Resound channels with history after a reconnect (docs/protocol.md 11.2).
//
// pusher-js drops unknown top-level fields when it decodes a message, so positions
// (`resound_position`) are read from the raw transport messages of each connection; the
// request to resume (`resound_resume`) is added to the `pusher:subscribe` that pusher-js
// sends when it re-subscribes after a reconnect. The server replays the missed events
// before any newer one and answers with `resound:recovery`; this helper turns that into a
// `recovered` or `failed` event. Works with pusher-js 7 and 8, and with Laravel Echo
// through `echo.connector.pusher`.

import type Pusher from "pusher-js";

/** Where this client is in a channel's history. */
interface Position {
  epoch: string;
  offset: number;
  /** The connection it was reached on: its own events are not replayed to it. */
  socketId?: string;
}

/** `recovered`: every event missed while disconnected was delivered, in order, before newer ones. */
export interface Recovered {
  channel: string;
  count: number;
}

/** `failed`: some events may be missing; refetch the channel's state from the application. */
export interface Failed {
  channel: string;
  reason: "window_exceeded" | "history_lost" | "history_unavailable" | string;
}

type Listener<T> = (event: T) => void;

export interface RecoveryOptions {
  /** Channels to resume (default: every channel). */
  channels?: (name: string) => boolean;
}

/** What `enableRecovery` returns: listen to `recovered` and `failed`. */
export class Recovery {
  private positions = new Map<string, Position>();
  /** Channels the server keeps no history for: not asked again. */
  private withoutHistory = new Set<string>();
  private listeners: { recovered: Listener<Recovered>[]; failed: Listener<Failed>[] } = {
    recovered: [],
    failed: [],
  };

  constructor(private pusher: Pusher, private options: RecoveryOptions = {}) {
    // The client's internals are untyped here on purpose: the helper leans on pusher-js's
    // `send_event`, connection manager and transport, stable across versions 7 and 8.
    const p = pusher as any;
    const send = p.send_event.bind(p);
    p.send_event = (name: string, data: any, channel?: string) => {
      if (name === "pusher:subscribe" && data && typeof data.channel === "string") {
        const resume = this.resumeFor(data.channel);
        if (resume) data = { ...data, resound_resume: resume };
      } else if (name === "pusher:unsubscribe" && data && typeof data.channel === "string") {
        this.positions.delete(data.channel);
      }
      return send(name, data, channel);
    };
    p.connection.bind("connected", () => this.watch());
    if (p.connection.state === "connected") this.watch();
  }

  on(event: "recovered", listener: Listener<Recovered>): this;
  on(event: "failed", listener: Listener<Failed>): this;
  on(event: "recovered" | "failed", listener: Listener<any>): this {
    this.listeners[event].push(listener);
    return this;
  }

  /** The position the client holds for `channel` (for diagnostics). */
  position(channel: string): { epoch: string; offset: number } | undefined {
    const p = this.positions.get(channel);
    return p && { epoch: p.epoch, offset: p.offset };
  }

  private resumeFor(channel: string): object | undefined {
    if (this.withoutHistory.has(channel)) return undefined;
    if (this.options.channels && !this.options.channels(channel)) return undefined;
    const p = this.positions.get(channel);
    if (!p) return {};
    return { epoch: p.epoch, offset: p.offset, socket_id: p.socketId };
  }

  /** Reads the raw messages of the connection that just opened. */
  private watch(): void {
    const p = this.pusher as any;
    const transport = p.connection?.connection?.transport;
    const socketId: string | undefined = p.connection?.socket_id;
    if (!transport || transport.__resoundWatched) return;
    transport.__resoundWatched = true;
    transport.bind("message", (event: { data?: unknown }) => {
      if (typeof event?.data === "string") this.read(event.data, socketId);
    });
  }

  private read(raw: string, socketId: string | undefined): void {
    // Cheap test first: most messages carry neither field.
    if (raw.indexOf("resound") < 0) return;
    let message: any;
    try {
      message = JSON.parse(raw);
    } catch {
      return;
    }
    const channel = message?.channel;
    if (typeof channel !== "string") return;
    const at = message.resound_position;
    if (at && typeof at.epoch === "string" && typeof at.offset === "number") {
      this.positions.set(channel, { epoch: at.epoch, offset: at.offset, socketId });
      return;
    }
    if (message.event !== "resound:recovery") return;
    let data: any;
    try {
      data = typeof message.data === "string" ? JSON.parse(message.data) : message.data;
    } catch {
      return;
    }
    const resumed = this.positions.has(channel);
    if (typeof data?.epoch === "string" && typeof data?.offset === "number") {
      this.positions.set(channel, { epoch: data.epoch, offset: data.offset, socketId });
    }
    if (data?.status === "recovered") {
      if (resumed) this.emit("recovered", { channel, count: Number(data.recovered) || 0 });
    } else if (data?.reason === "no_history") {
      this.withoutHistory.add(channel);
      this.positions.delete(channel);
    } else if (resumed) {
      this.emit("failed", { channel, reason: String(data?.reason) });
    }
  }

  private emit(event: "recovered" | "failed", value: any): void {
    for (const l of this.listeners[event]) {
      try {
        l(value);
      } catch (e) {
        // A listener's error must not stop the others nor the client.
        setTimeout(() => {
          throw e;
        });
      }
    }
  }
}

/**
 * Resumes channels with history after every reconnect. One line:
 *
 *     const recovery = enableRecovery(pusher);            // or enableRecovery(echo.connector.pusher)
 *     recovery.on("recovered", ({ channel, count }) => ...);
 *     recovery.on("failed", ({ channel, reason }) => refetch(channel));
 */
export function enableRecovery(pusher: Pusher, options?: RecoveryOptions): Recovery {
  return new Recovery(pusher, options);
}
