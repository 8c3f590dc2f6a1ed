// duplex.js: a small browser client for the duplex gateway (docs/web.md).
//
// An ES module with no dependencies and no build step:
//
//   import { Duplex } from './duplex.js';
//   const c = new Duplex('/ws', { onState: (s, info) => console.log(s, info) });
//   await c.subscribe('chat.lobby', (msg) => console.log(msg.offset, msg.data));
//   const { offset, epoch } = await c.publish('chat.lobby', { text: 'hi' });
//   const { count, users } = await c.presence('chat.lobby');
//   c.close();
//
// It speaks the JSON dialect (subprotocol duplex.v1), reconnects with
// full-jitter exponential backoff and resumes every topic from the last
// {offset, epoch} it delivered, so a handler sees each message once and in
// order across reconnects; when the server cannot resume (another epoch, or
// history too short) it says so through the `missed` event. When WebSocket
// is absent or never manages to connect, it falls back to Server-Sent Events
// (/sse): receive-only, so publish() and presence() reject there.

const PROTOCOL = 'duplex.v1';

/** Connection states passed to onState / the 'state' event. */
export const State = Object.freeze({
  CONNECTING: 'connecting',     // first WebSocket attempt (or connect() after disconnect())
  OPEN: 'open',                 // WebSocket open, subscriptions (re)sent
  RECONNECTING: 'reconnecting', // waiting info.delay ms before attempt info.attempt
  SSE: 'sse',                   // receiving over EventSource (receive-only)
  OFFLINE: 'offline',           // disconnect() was called; connect() resumes
  CLOSED: 'closed',             // close() was called, or the server ended us (4000, 4001)
});

/** A failed request: `code` is the gateway's err code (4400, 4403, ...), or 0 when no answer came. */
export class DuplexError extends Error {
  constructor(code, reason) {
    super(code ? `${code} ${reason}` : reason);
    this.name = 'DuplexError';
    this.code = code;
    this.reason = reason;
  }
}

const isPattern = (t) => t.split('.').some((s) => s === '*' || s === '>');

function toBase64(bytes) {
  let s = '';
  for (let i = 0; i < bytes.length; i += 0x8000) s += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
  return btoa(s);
}

function fromBase64(b64) {
  const s = atob(b64);
  const out = new Uint8Array(s.length);
  for (let i = 0; i < s.length; i++) out[i] = s.charCodeAt(i);
  return out;
}

function absoluteUrl(u, scheme) {
  // scheme: 'ws' or 'http'; accepts ws(s)://, http(s):// or a path relative to the page.
  const base = typeof location !== 'undefined' ? location.href : 'http://localhost/';
  const url = new URL(u, base);
  const tls = url.protocol === 'https:' || url.protocol === 'wss:';
  url.protocol = scheme === 'ws' ? (tls ? 'wss:' : 'ws:') : (tls ? 'https:' : 'http:');
  return url;
}

/** The MS of a close reason "retry=MS" (a draining server's hint), or null; capped at 10 minutes. */
export function retryHint(reason) {
  const m = /^retry=(\d{1,9})$/.exec(reason || '');
  return m ? Math.min(Number(m[1]), 600000) : null;
}

export class Duplex {
  /**
   * @param {string} [url] WebSocket URL of the gateway's /ws (ws://, wss://, http(s):// or a path; default '/ws' on this page's host)
   * @param {object} [opts]
   * @param {string} [opts.sseUrl] the /sse URL (default: url's host, path /sse)
   * @param {(state: string, info: object) => void} [opts.onState] connection state changes
   * @param {'auto'|'ws'|'sse'} [opts.transport] 'auto' (default): WebSocket, SSE when it cannot connect
   * @param {number} [opts.sseAfter] WebSocket failures (never opened) before falling back to SSE (default 3; 0: never)
   * @param {{base?: number, cap?: number, stable?: number}} [opts.backoff] ms: base 500, cap 30000; the attempt count resets after a connection stayed open `stable` ms (5000)
   * @param {number} [opts.connectTimeout] ms a WebSocket handshake may take before it counts as failed (default 15000)
   * @param {number} [opts.timeout] ms a request waits for its answer, queued while disconnected included (default 10000)
   * @param {string|(() => string|Promise<string>)} [opts.token] a JWT, sent as the second subprotocol `token.<jwt>`
   *   (never selected by the gateway; over SSE it goes in ?token=); see refresh()
   * @param {number[]} [opts.noReconnect] close codes that end the client instead of reconnecting (default [4000, 4001])
   */
  constructor(url = '/ws', opts = {}) {
    this.url = absoluteUrl(url, 'ws').href;
    if (opts.sseUrl) {
      this.sseUrl = absoluteUrl(opts.sseUrl, 'http').href;
    } else {
      const s = absoluteUrl(url, 'http');
      s.pathname = s.pathname.replace(/\/ws\/?$/, '') + '/sse';
      s.search = '';
      this.sseUrl = s.href;
    }
    this.opts = opts;
    this.backoff = { base: 500, cap: 30000, stable: 5000, ...(opts.backoff || {}) };
    this.timeout = opts.timeout ?? 10000;
    this.connectTimeout = opts.connectTimeout ?? 15000;
    this.sseAfter = opts.sseAfter ?? 3;
    this.noReconnect = opts.noReconnect ?? [4000, 4001];
    this.state = null;
    this.transport = null;        // 'ws' or 'sse' once chosen
    this._subs = new Map();       // topic or pattern -> subscription record
    this._pos = new Map();        // topic -> {offset, epoch}: the last message delivered
    this._pending = new Map();    // id -> {resolve, reject, timer}
    this._queue = [];             // requests waiting for an open socket
    this._listeners = new Map();
    this._nextId = 1;
    this._attempt = 0;            // reconnect attempts since the last stable connection
    this._failures = 0;           // WebSocket attempts that never opened, in a row
    this._everOpened = false;
    this._ws = null;
    this._es = null;
    this._timer = null;
    this._stableTimer = null;
    this._closed = false;
    this._offline = false;
    if (opts.onState) this.on('state', opts.onState);
    const forceSse = opts.transport === 'sse' || (opts.transport !== 'ws' && typeof WebSocket === 'undefined');
    // Started on a microtask, so listeners added right after construction see the first state.
    queueMicrotask(() => {
      if (this._closed || this._offline || this.transport) return;
      if (forceSse) this._startSse(); else this._connect(State.CONNECTING);
    });
  }

  // ------------------------------------------------------------ events

  /** on('state' | 'missed' | 'gap' | 'error' | 'ack', fn); returns a function that removes it. */
  on(event, fn) {
    if (!this._listeners.has(event)) this._listeners.set(event, new Set());
    this._listeners.get(event).add(fn);
    return () => this._listeners.get(event).delete(fn);
  }

  _emit(event, ...args) {
    for (const fn of this._listeners.get(event) || []) {
      try { fn(...args); } catch (e) { setTimeout(() => { throw e; }); }
    }
  }

  _setState(state, info = {}) {
    this.state = state;
    this._emit('state', state, info);
  }

  // ------------------------------------------------------------ public API

  /**
   * Subscribes to a topic or pattern. handler(msg) gets {topic, offset, epoch, data | b64 + bytes, pattern?}.
   * opts.since {offset, epoch?}: resume after that position (no epoch: the topic's current epoch;
   * {offset: 0} asks for everything retained). opts.onMissed(info), opts.onGap(gap): per-subscription events.
   * Resolves with the first ack {topic, offset, epoch, recovered}; rejects on err (and forgets the subscription).
   */
  subscribe(topic, handler, opts = {}) {
    if (this._closed) return Promise.reject(new DuplexError(0, 'closed'));
    const old = this._subs.get(topic);
    if (old && old.acked && old.pattern === isPattern(topic)) {
      // Already subscribed: only the handler and callbacks change; the position is kept.
      Object.assign(old, { handler, onMissed: opts.onMissed, onGap: opts.onGap });
      return Promise.resolve({ topic, ...(this._pos.get(topic) || { offset: 0, epoch: '' }), recovered: false });
    }
    if (old && old.first) { old.first.reject(new DuplexError(0, 'subscribed again')); old.first = null; }
    const sub = { topic, handler, pattern: isPattern(topic), onMissed: opts.onMissed, onGap: opts.onGap,
                  acked: false, hadMessages: false, first: null, catchUp: false, held: null };
    if (opts.since && !sub.pattern) {
      this._pos.set(topic, { offset: opts.since.offset, epoch: opts.since.epoch ?? null });
      sub.hadMessages = opts.since.offset > 0;
    }
    this._subs.set(topic, sub);
    const first = new Promise((resolve, reject) => { sub.first = { resolve, reject }; });
    if (this.transport === 'sse') {
      this._restartSse();
    } else {
      this._sendSub(sub);
    }
    return first;
  }

  /** Stops a subscription; resolves once the server acked (or at once when disconnected). */
  unsubscribe(topic) {
    const sub = this._subs.get(topic);
    this._subs.delete(topic);
    this._pos.delete(topic);
    if (!sub) return Promise.resolve();
    if (this.transport === 'sse') { this._restartSse(); return Promise.resolve(); }
    if (!this._isOpen()) return Promise.resolve();
    return this._request({ op: 'unsub', topic }).then(() => undefined);
  }

  /**
   * Publishes on a topic: a string is kind text, an ArrayBuffer / typed array kind binary,
   * any other JSON value kind json. Resolves {offset, epoch} once the gateway accepted it;
   * rejects with a DuplexError on err, when no answer came (the connection dropped: it may
   * or may not have been published), or over SSE (receive-only).
   */
  publish(topic, data) {
    if (this.transport === 'sse') return Promise.reject(new DuplexError(0, 'receive-only (SSE): publish is not available'));
    const req = { op: 'pub', topic };
    if (data instanceof ArrayBuffer) req.b64 = toBase64(new Uint8Array(data));
    else if (ArrayBuffer.isView(data)) req.b64 = toBase64(new Uint8Array(data.buffer, data.byteOffset, data.byteLength));
    else req.data = data;
    return this._request(req).then((a) => ({ offset: a.offset, epoch: a.epoch }));
  }

  /** Resolves {count, users} for a topic; rejects over SSE. */
  presence(topic) {
    if (this.transport === 'sse') return Promise.reject(new DuplexError(0, 'receive-only (SSE): presence is not available'));
    return this._request({ op: 'presence', topic }).then((a) => ({ count: a.count, users: a.users || [] }));
  }

  /**
   * Hands the gateway a new JWT for the same user before the current one expires (the JSON
   * dialect's `refresh`; the gateway closes with 4001 at expiry otherwise). Resolves once
   * acknowledged; rejects with a DuplexError (4401: invalid, or for another user). Later
   * reconnects offer the new token (a function given as opts.token is asked again instead).
   * Over SSE the stream is reopened with the new token.
   */
  refresh(token) {
    if (typeof this.opts.token !== 'function') this.opts.token = token;
    this._token = token;
    if (this.transport === 'sse') { this._restartSse(); return Promise.resolve(); }
    return this._request({ op: 'refresh', token }).then(() => undefined);
  }

  /** The last position delivered on a topic, {offset, epoch}, or undefined. */
  position(topic) { return this._pos.get(topic); }

  /** Drops the connection (as a network loss would) and stays offline until connect(); subscriptions are kept and resumed. */
  disconnect() {
    if (this._closed) return;
    this._offline = true;
    this._teardown('offline');
    this._setState(State.OFFLINE);
  }

  /** Reconnects after disconnect() (resuming every subscription), or at once when waiting to reconnect. */
  connect() {
    if (this._closed) return;
    if (this._offline) {
      this._offline = false;
      this._attempt = 0;
      if (this.transport === 'sse') this._startSse(); else this._connect(State.CONNECTING);
    } else if (this._timer && this.transport !== 'sse') {
      clearTimeout(this._timer);
      this._timer = null;
      this._connect(State.CONNECTING);
    }
  }

  /** Closes for good: pending requests reject, no reconnect. */
  close() {
    if (this._closed) return;
    this._closed = true;
    this._teardown('closed');
    this._setState(State.CLOSED, {});
  }

  // ------------------------------------------------------------ WebSocket transport

  _isOpen() { return this._ws && this._ws.readyState === 1 && this.transport === 'ws'; }

  async _connect(state) {
    this.transport = 'ws';
    this._setState(state, { attempt: this._attempt });
    let protocols = [PROTOCOL];
    if (this.opts.token) {
      try {
        const t = typeof this.opts.token === 'function' ? await this.opts.token() : this.opts.token;
        if (t) {
          protocols = [PROTOCOL, `token.${t}`];
          this._token = t;
        }
      } catch (e) {
        this._emit('error', e);
      }
      if (this._closed || this._offline) return;
    }
    let ws;
    try {
      ws = new WebSocket(this.url, protocols);
    } catch (e) {
      this._emit('error', e);
      this._onWsClose(null, { code: 1006, reason: String(e.message || e) });
      return;
    }
    this._ws = ws;
    let opened = false;
    // A handshake that hangs (a black-holed address, a proxy that holds it) counts as a failure.
    const hang = setTimeout(() => {
      if (this._ws !== ws || opened) return;
      try { ws.close(); } catch (_) { /* closing anyway */ }
      this._onWsClose(false, { code: 1006, reason: `no answer within ${this.connectTimeout} ms` });
    }, this.connectTimeout);
    ws.onopen = () => {
      clearTimeout(hang);
      if (this._ws !== ws) return;
      opened = true;
      this._everOpened = true;
      this._failures = 0;
      clearTimeout(this._stableTimer);
      this._stableTimer = setTimeout(() => { this._attempt = 0; }, this.backoff.stable);
      for (const sub of this._subs.values()) this._sendSub(sub);
      const q = this._queue;
      this._queue = [];
      for (const r of q) this._send(r.req);
      this._setState(State.OPEN, {}); // after the subscriptions: what the app sends now follows them
    };
    ws.onmessage = (e) => { if (this._ws === ws) this._onFrame(e.data); };
    ws.onerror = () => {};
    ws.onclose = (e) => { clearTimeout(hang); if (this._ws === ws) this._onWsClose(opened, e); };
  }

  _onWsClose(opened, e) {
    this._ws = null;
    clearTimeout(this._stableTimer);
    if (!opened) this._failures++;
    // Sent and unanswered: the server may or may not have done it. Queued ones wait for the next connection.
    for (const [id, p] of this._pending) {
      if (p.sent) {
        clearTimeout(p.timer);
        this._pending.delete(id);
        p.reject(new DuplexError(0, 'connection lost before the answer'));
      }
    }
    for (const sub of this._subs.values()) { sub.acked = false; sub.catchUp = false; sub.held = null; }
    if (this._closed || this._offline) return;
    if (this.noReconnect.includes(e.code)) {
      this._closed = true;
      this._teardown('closed');
      this._setState(State.CLOSED, { code: e.code, reason: e.reason });
      return;
    }
    if (!this._everOpened && this.sseAfter > 0 && this._failures >= this.sseAfter && typeof EventSource !== 'undefined' &&
        this.opts.transport !== 'ws') {
      this._startSse();
      return;
    }
    // 1012 "retry=MS": the server drains for a restart (docs/gateway.md "Drain"): come back after MS plus a
    // random jitter of up to MS, so a node's clients do not all reconnect at the same instant.
    const hint = e.code === 1012 ? retryHint(e.reason) : null;
    this._schedule(() => this._connect(State.CONNECTING), { code: e.code, reason: e.reason }, hint);
  }

  _schedule(fn, info = {}, hint = null) {
    // Full jitter: a uniform delay in [0, min(cap, base * 2^attempt)]; after a drain hint, in [hint, 2 * hint].
    const ceil = Math.min(this.backoff.cap, this.backoff.base * 2 ** Math.min(this._attempt, 30));
    const delay = hint !== null ? hint + Math.floor(Math.random() * (hint + 1)) : Math.floor(Math.random() * ceil);
    this._attempt++;
    this._setState(State.RECONNECTING, { ...info, delay, attempt: this._attempt });
    clearTimeout(this._timer);
    this._timer = setTimeout(() => { this._timer = null; fn(); }, delay);
  }

  _teardown(why) {
    clearTimeout(this._timer);
    this._timer = null;
    clearTimeout(this._stableTimer);
    if (this._ws) {
      const ws = this._ws;
      this._ws = null;
      try { ws.close(1000); } catch (_) { /* already closing */ }
    }
    if (this._es) { this._es.close(); this._es = null; }
    for (const sub of this._subs.values()) { sub.acked = false; sub.catchUp = false; sub.held = null; }
    const err = new DuplexError(0, why === 'closed' ? 'closed' : 'connection lost before the answer');
    for (const [id, p] of this._pending) {
      if (why === 'closed' || p.sent) {
        clearTimeout(p.timer);
        this._pending.delete(id);
        p.reject(err);
      }
    }
    if (why === 'closed') {
      for (const r of this._queue) r.reject(err);
      this._queue = [];
      for (const sub of this._subs.values()) if (sub.first) { sub.first.reject(err); sub.first = null; }
    }
  }

  _send(obj) {
    const p = obj.id !== undefined ? this._pending.get(obj.id) : null;
    if (p) p.sent = true;
    this._ws.send(JSON.stringify(obj));
  }

  _request(req) {
    if (this._closed) return Promise.reject(new DuplexError(0, 'closed'));
    return new Promise((resolve, reject) => {
      const id = this._nextId++;
      req.id = id;
      const p = { resolve, reject, sent: false, timer: null };
      p.timer = setTimeout(() => {
        this._pending.delete(id);
        this._queue = this._queue.filter((r) => r.req !== req);
        reject(new DuplexError(0, `no answer within ${this.timeout} ms`));
      }, this.timeout);
      this._pending.set(id, p);
      if (this._isOpen()) this._send(req);
      else this._queue.push({ req, reject });
    });
  }

  _sendSub(sub) {
    if (!this._isOpen()) return;
    const req = { op: 'sub', topic: sub.topic };
    const pos = this._pos.get(sub.topic);
    if (pos && !sub.pattern) {
      req.since = pos.epoch ? { offset: pos.offset, epoch: pos.epoch } : { offset: pos.offset };
    }
    const since = req.since ? { ...req.since } : null;
    this._request(req).then((ack) => this._onSubAck(sub, ack, since), (err) => {
      if (err.code && this._subs.get(sub.topic) === sub) {
        this._subs.delete(sub.topic);
        this._pos.delete(sub.topic);
        this._emit('error', err, sub.topic);
      }
      if (err.code && sub.first) { sub.first.reject(err); sub.first = null; }
    });
  }

  _onSubAck(sub, ack, since) {
    if (this._subs.get(sub.topic) !== sub) return;
    sub.acked = true;
    const info = { topic: sub.topic, offset: ack.offset, epoch: ack.epoch, recovered: !!ack.recovered };
    this._emit('ack', info);
    if (sub.pattern) {
      // Patterns have no history: after a reconnect, what was published meanwhile is gone.
      if (sub.hadMessages) this._missed(sub, { topic: sub.topic, pattern: true, since: null, offset: 0, epoch: '', epochChanged: false });
    } else if (!since) {
      // Live from here: a later reconnect resumes from this ack's position.
      this._pos.set(sub.topic, { offset: ack.offset, epoch: ack.epoch });
    } else if (!ack.recovered) {
      const epochChanged = !!since.epoch && since.epoch !== ack.epoch;
      if (sub.hadMessages || since.offset > 0) {
        this._missed(sub, { topic: sub.topic, pattern: false, since, offset: ack.offset, epoch: ack.epoch, epochChanged });
      }
      if (epochChanged && ack.offset > 0) {
        // From offset 0 of the new epoch: also what a reconnect during the catch-up asks for.
        this._pos.set(sub.topic, { offset: 0, epoch: ack.epoch });
        this._catchUp(sub, ack.epoch);
      } else {
        this._pos.set(sub.topic, { offset: ack.offset, epoch: ack.epoch });
      }
    } else {
      // Recovered: the missed messages follow; a since without epoch meant this one.
      const pos = this._pos.get(sub.topic);
      if (pos && !pos.epoch) pos.epoch = ack.epoch;
    }
    if (sub.first) { sub.first.resolve(info); sub.first = null; }
  }

  // The epoch changed while we were away and the new epoch already has messages: fetch them
  // (everything retained since its offset 0), holding live ones until the replay has started.
  _catchUp(sub, epoch) {
    sub.catchUp = true;
    sub.held = [];
    this._request({ op: 'unsub', topic: sub.topic })
      .then(() => this._request({ op: 'sub', topic: sub.topic, since: { offset: 0, epoch } }))
      .then((ack) => {
        if (this._subs.get(sub.topic) !== sub || !sub.catchUp) return;
        const held = sub.held;
        sub.catchUp = false;
        sub.held = null;
        if (!ack.recovered) this._missed(sub, { topic: sub.topic, pattern: false, since: { offset: 0, epoch }, offset: ack.offset, epoch: ack.epoch, epochChanged: ack.epoch !== epoch });
        this._pos.set(sub.topic, { offset: 0, epoch: ack.epoch });
        // Live messages seen before the replay are all in it (or newer); the replay follows in order.
        for (const m of held) if (m.epoch !== ack.epoch) this._deliver(sub, m);
      }, () => { sub.catchUp = false; sub.held = null; });
  }

  _missed(sub, info) {
    if (sub.onMissed) { try { sub.onMissed(info); } catch (e) { setTimeout(() => { throw e; }); } }
    this._emit('missed', info);
  }

  _onFrame(text) {
    let m;
    try { m = JSON.parse(text); } catch (e) { this._emit('error', new DuplexError(0, 'bad frame from server')); return; }
    if (m.op === 'msg') {
      this._onMsg(m);
    } else if (m.op === 'ack' || m.op === 'err') {
      const p = m.id !== undefined ? this._pending.get(m.id) : null;
      if (!p) { if (m.op === 'err') this._emit('error', new DuplexError(m.code, m.reason)); return; }
      this._pending.delete(m.id);
      clearTimeout(p.timer);
      if (m.op === 'ack') p.resolve(m); else p.reject(new DuplexError(m.code, m.reason));
    } else if (m.op === 'gap') {
      const sub = this._subs.get(m.topic);
      const pos = this._pos.get(m.topic);
      if (pos && m.to > pos.offset) pos.offset = m.to;
      const gap = { topic: m.topic, from: m.from, to: m.to };
      if (sub && sub.onGap) { try { sub.onGap(gap); } catch (e) { setTimeout(() => { throw e; }); } }
      this._emit('gap', gap);
    }
  }

  _onMsg(m) {
    const sub = this._subs.get(m.pattern || m.topic) || (m.pattern ? null : this._subs.get(m.topic));
    if (!sub) return;
    if (sub.catchUp) { sub.held.push(m); return; }
    this._deliver(sub, m);
  }

  _deliver(sub, m) {
    if (!sub.pattern) {
      const pos = this._pos.get(m.topic);
      // Exactly once: a message at or before the position already delivered (same epoch) is a duplicate.
      if (pos && pos.epoch === m.epoch && m.offset <= pos.offset) return;
      this._pos.set(m.topic, { offset: m.offset, epoch: m.epoch });
    }
    sub.hadMessages = true;
    const msg = { topic: m.topic, offset: m.offset, epoch: m.epoch };
    if ('b64' in m) { msg.b64 = m.b64; msg.bytes = fromBase64(m.b64); } else msg.data = m.data;
    if (m.pattern) msg.pattern = m.pattern;
    try { sub.handler(msg); } catch (e) { setTimeout(() => { throw e; }); }
  }

  // ------------------------------------------------------------ SSE transport (receive-only)

  _startSse() {
    this.transport = 'sse';
    // Pending and queued requests cannot be answered over SSE.
    const err = new DuplexError(0, 'receive-only (SSE)');
    for (const [id, p] of this._pending) { clearTimeout(p.timer); this._pending.delete(id); p.reject(err); }
    for (const r of this._queue) r.reject(err);
    this._queue = [];
    this._openSse();
  }

  _restartSse() {
    if (this._closed || this._offline) return;
    clearTimeout(this._timer);
    this._timer = null;
    this._openSse();
  }

  _openSse() {
    if (this._es) { this._es.close(); this._es = null; }
    const topics = [...this._subs.values()].filter((s) => !s.pattern).map((s) => s.topic);
    for (const s of this._subs.values()) {
      if (s.pattern && s.first) { s.first.reject(new DuplexError(4400, 'patterns are not available over SSE')); s.first = null; }
    }
    this._setState(State.SSE, { connected: false, topics });
    if (!topics.length) return; // nothing to receive until subscribe()
    const url = new URL(this.sseUrl);
    url.searchParams.set('subscribe', topics.join(','));
    const since = [];
    const sent = new Map();
    for (const t of topics) {
      const p = this._pos.get(t);
      if (p) { since.push(`${t}:${p.offset}`); sent.set(t, { ...p }); }
    }
    if (since.length) url.searchParams.set('since', since.join(','));
    // EventSource cannot set headers: the token (the last one used, or a string opts.token) goes in ?token=
    const tok = this._token || (typeof this.opts.token === 'string' ? this.opts.token : null);
    if (tok) url.searchParams.set('token', tok);
    const es = new EventSource(url.href);
    this._es = es;
    es.addEventListener('open', () => {
      if (this._es !== es) return;
      this._attempt = 0;
      this._setState(State.SSE, { connected: true, topics });
    });
    es.addEventListener('ack', (e) => {
      if (this._es !== es) return;
      let a;
      try { a = JSON.parse(e.data); } catch (_) { return; }
      const sub = this._subs.get(a.topic);
      if (!sub) return;
      const asked = sent.get(a.topic);
      sent.delete(a.topic); // a reconnect by the browser itself resumes from Last-Event-ID (with epochs)
      const pos = this._pos.get(a.topic);
      // ?since= assumes the current epoch, and the browser's own reconnect (Last-Event-ID) may
      // meet a new one: either way a position from another epoch resumed nothing of ours.
      const known = asked || pos;
      const epochChanged = !!(known && known.epoch && known.epoch !== a.epoch);
      if (known && (!a.recovered || epochChanged) && (sub.hadMessages || known.offset > 0)) {
        this._missed(sub, { topic: a.topic, pattern: false, since: known, offset: a.offset, epoch: a.epoch, epochChanged });
      }
      if (epochChanged && a.offset > 0) {
        // The new epoch already has messages: start over at its offset 0 (everything retained).
        this._pos.set(a.topic, { offset: 0, epoch: a.epoch });
        sub.acked = true;
        if (sub.first) { sub.first.resolve({ topic: a.topic, offset: a.offset, epoch: a.epoch, recovered: false }); sub.first = null; }
        this._openSse();
        return;
      }
      if (!a.recovered || !pos || epochChanged) this._pos.set(a.topic, { offset: a.offset, epoch: a.epoch });
      else if (!pos.epoch) pos.epoch = a.epoch;
      sub.acked = true;
      const info = { topic: a.topic, offset: a.offset, epoch: a.epoch, recovered: !!a.recovered };
      this._emit('ack', info);
      if (sub.first) { sub.first.resolve(info); sub.first = null; }
    });
    es.addEventListener('msg', (e) => {
      if (this._es !== es) return;
      let m;
      try { m = JSON.parse(e.data); } catch (_) { return; }
      const sub = this._subs.get(m.topic);
      if (sub) this._deliver(sub, m);
    });
    es.addEventListener('error', () => {
      if (this._es !== es) return;
      if (es.readyState === 2) {
        // The browser gave up (a refused answer): reopen with our own backoff and positions.
        this._es = null;
        if (this._closed || this._offline) return;
        this._schedule(() => this._openSse(), { transport: 'sse' });
      } else {
        this._setState(State.RECONNECTING, { transport: 'sse', delay: 1000, attempt: 1 });
      }
    });
  }
}

export default Duplex;
