// ResumingSocket: the pages' WebSocket (docs/protocol.md, "Acks, resends and resume").
// - It reconnects by itself, with exponential backoff and jitter (0.5 s doubling up to 30 s, then a random
//   half to whole of that), and resumes after the last seq it saw (?since=), so nothing is missed or shown twice.
// - Every message it sends carries a client_id and stays in its outbox until the server acks it; on every
//   (re)connect the outbox is sent again, and the server stores a client_id once: typed while disconnected,
//   a message is sent on reconnect and stored exactly once. One not acked within ackTimeoutMs (default 5 s)
//   is sent again on the open socket too: the broker keeps no copy of a message not stored yet, so a broker
//   restart under an open socket is mended by the resend.
// - It stops for good on the close codes that say retrying cannot help (invalid room, no or bad token,
//   not a participant, no such room).
// - A message refused by the rate limit ({"code":"rate_limited","retry_after_ms"}) stays in the outbox and is
//   sent again once the hint has passed.
// - With handlers.refreshToken (async () => a new token for the same user) and handlers.expiresAt (ms), it
//   sends {"type":"refresh","token"} before the token expires (a minute before, or a fifth of its life), so
//   the server does not close the socket with 4401; each {"type":"refreshed","expires_at"} schedules the next.
class ResumingSocket {
  constructor(urlFor, handlers) {
    this.urlFor = urlFor;            // since (a seq, or null) -> the socket's URL
    this.onFrame = handlers.onFrame; // every frame but acks; chat frames once each, in seq order
    this.onState = handlers.onState; // (state, detail): connecting, connected, reconnecting, closed
    this.lastSeq = null;
    this.outbox = [];
    this.attempt = 0;
    this.stopped = false;
    this.prefix = (self.crypto && crypto.randomUUID) ? crypto.randomUUID().slice(0, 13)
                                                     : Math.random().toString(36).slice(2, 15);
    this.counter = 0;
    this.ackTimeoutMs = handlers.ackTimeoutMs || 5000;
    this.resender = setInterval(() => this.resendOverdue(), Math.min(1000, this.ackTimeoutMs));
    this.refreshToken = handlers.refreshToken || null;
    this.expiresAt = handlers.expiresAt || null;
    this.holdUntil = 0;
    this.scheduleRefresh();
    this.connect();
  }

  // Asks for a new token ahead of this.expiresAt and sends it on the open socket.
  scheduleRefresh() {
    clearTimeout(this.refreshTimer);
    if (!this.refreshToken || !this.expiresAt) return;
    const left = this.expiresAt - Date.now();
    const delay = Math.max(500, left - Math.min(60000, left / 5));
    this.refreshTimer = setTimeout(async () => {
      try {
        const token = await this.refreshToken();
        if (token) this.sendNow({type: 'refresh', token});
      } catch (e) { /* the next reconnect asks again through urlFor */ }
    }, delay);
  }

  // Sends again, on the open socket, what has waited longer than ackTimeoutMs for its ack.
  resendOverdue() {
    if (!this.ws || this.ws.readyState !== WebSocket.OPEN) return;
    const now = Date.now();
    if (now < this.holdUntil) return;
    for (const entry of this.outbox) {
      if (now - entry.sentAt < this.ackTimeoutMs) continue;
      entry.sentAt = now;
      this.ws.send(JSON.stringify(entry.frame));
    }
  }

  static fatal = new Set([4400, 4401, 4403, 4404]);

  connect() {
    this.onState(this.attempt === 0 ? 'connecting' : 'reconnecting');
    const ws = new WebSocket(this.urlFor(this.lastSeq));
    this.ws = ws;
    ws.onopen = () => {
      this.attempt = 0;
      this.onState('connected');
      for (const entry of this.outbox) {
        entry.sentAt = Date.now();
        ws.send(JSON.stringify(entry.frame));
      }
    };
    ws.onmessage = (e) => {
      const data = JSON.parse(e.data);
      if (data.type === 'ack') {
        this.outbox = this.outbox.filter((entry) => entry.frame.client_id !== data.client_id);
        return;
      }
      if (data.type === 'refreshed') {
        this.expiresAt = data.expires_at;
        this.scheduleRefresh();
        return;
      }
      if (data.code === 'rate_limited') {
        // Sent again by resendOverdue once the hint has passed (and the ack timeout, counted from now).
        this.holdUntil = Date.now() + data.retry_after_ms;
        for (const entry of this.outbox) entry.sentAt = Math.min(entry.sentAt, this.holdUntil - this.ackTimeoutMs);
      }
      if (data.type === 'reset') this.lastSeq = data.last_seq;
      if (data.seq !== undefined && data.type === undefined) {
        if (this.lastSeq !== null && data.seq <= this.lastSeq) return;  // already shown
        this.lastSeq = data.seq;
      }
      this.onFrame(data);
    };
    ws.onclose = (e) => {
      if (this.ws !== ws) return;
      this.ws = null;
      if (this.stopped) return;
      if (ResumingSocket.fatal.has(e.code)) {
        this.onState('closed', e.reason || ('code ' + e.code));
        return;
      }
      this.attempt += 1;
      const ceiling = Math.min(30000, 500 * Math.pow(2, Math.min(this.attempt - 1, 6)));
      const delay = ceiling / 2 + Math.random() * ceiling / 2;
      this.onState('reconnecting', 'in ' + (delay / 1000).toFixed(1) + ' s');
      this.timer = setTimeout(() => this.connect(), delay);
    };
  }

  // Sends a message frame (an object); it is resent on reconnect until acked.
  send(frame) {
    this.counter += 1;
    const withID = Object.assign({}, frame, {client_id: this.prefix + '-' + this.counter});
    this.outbox.push({frame: withID, sentAt: Date.now()});
    if (this.ws && this.ws.readyState === WebSocket.OPEN) this.ws.send(JSON.stringify(withID));
  }

  // Sends a frame that needs no ack (a read receipt), only while connected.
  sendNow(frame) {
    if (this.ws && this.ws.readyState === WebSocket.OPEN) this.ws.send(JSON.stringify(frame));
  }

  get pending() { return this.outbox.length; }

  close() {
    this.stopped = true;
    clearTimeout(this.timer);
    clearInterval(this.resender);
    clearTimeout(this.refreshTimer);
    if (this.ws) this.ws.close();
  }
}
