'use strict';

/**
 * Draining a Node server without failing a single request of a keep-alive client.
 *
 * `server.close()` alone is not enough: since Node 19 `http.Server#close` also closes every idle
 * keep-alive connection at once, and a client that is just sending its next request on such a
 * connection gets ECONNRESET / "socket hang up". So draining goes:
 *   1. stop accepting: `net.Server.prototype.close` on the listening handle(s) (the socket itself
 *      lives on in handoff and the other workers, which keep accepting);
 *   2. HTTP/1: answer every request still arriving on an open connection, and every in-flight one
 *      that has not sent its headers yet, with `Connection: close`, so the client closes cleanly;
 *      HTTP/2: `session.close()` sends GOAWAY, lets the open streams finish, then closes;
 *   3. close connections that stay idle (no request in flight) for `idleGraceMs`: the same race a
 *      keep-alive timeout has, only once per connection;
 *   4. resolve when no connection is left (or, with `timeoutMs`, destroy what is left then).
 *
 * The tracking has to see every connection from the start, so `track(server)` runs before the
 * server accepts (listen() in index.js does it).
 */

const net = require('net');

const kTracker = Symbol.for('@handoff/worker.tracker');
const kSession = Symbol('@handoff/worker.session');
const kStreams = Symbol('@handoff/worker.streams');

class Conn {
  constructor(socket) {
    this.socket = socket;
    this.active = 0; // HTTP/1 requests in flight on it
    this.idleSince = Date.now();
    this.tls = null; // the TLSSocket wrapping it (https, http2 secure)
  }
}

class Tracker {
  constructor(server) {
    this.server = server;
    this.conns = new Map(); // raw socket -> Conn
    this.byReqSocket = new WeakMap(); // socket a request arrives on (raw or TLS) -> Conn
    this.sessions = new Set(); // HTTP/2 sessions
    this.responses = new Set(); // HTTP/1 responses in flight
    this.extraListeners = []; // net.Servers on further inherited fds, feeding `server`
    this.draining = false;
    this.drained = null;
    this.forced = 0;

    server.on('connection', socket => this._onConnection(socket));
    // https / http2 secure: requests arrive on the TLSSocket wrapping the raw one. `_parent` links
    // them (Node's tls server sets it; relied upon and tested, see README).
    server.on('secureConnection', tlsSocket => {
      const conn = tlsSocket._parent && this.conns.get(tlsSocket._parent);
      if (conn) {
        conn.tls = tlsSocket;
        this.byReqSocket.set(tlsSocket, conn);
      } else {
        // No link: track the TLS socket on its own.
        this._onConnection(tlsSocket);
      }
    });
    // Before the app's own handler, so `Connection: close` is set while headers can still change.
    server.prependListener('request', (req, res) => this._onRequest(req, res));
    server.on('session', session => this._onSession(session));
    // HTTP/2 streams (requests) per session, for stats().
    server.on('stream', stream => {
      const session = stream.session;
      if (!session) return;
      session[kStreams] = (session[kStreams] || 0) + 1;
      stream.once('close', () => { session[kStreams]--; });
    });
  }

  _onConnection(socket) {
    const conn = new Conn(socket);
    this.conns.set(socket, conn);
    this.byReqSocket.set(socket, conn);
    socket.once('close', () => {
      this.conns.delete(socket);
      this._check();
    });
  }

  _onRequest(req, res) {
    if (req.httpVersionMajor >= 2) return; // HTTP/2 compat request: its session is tracked
    const conn = this.byReqSocket.get(req.socket);
    if (this.draining && !res.headersSent) res.setHeader('Connection', 'close');
    this.responses.add(res);
    if (conn) conn.active++;
    res.once('close', () => {
      this.responses.delete(res);
      if (!conn) return;
      conn.active--;
      conn.idleSince = Date.now();
    });
  }

  _onSession(session) {
    // An Http2Session's `socket` is a proxy that forwards property reads and writes to the
    // underlying (raw or TLS) socket: mark that socket, whichever event came first.
    this.sessions.add(session);
    session.socket[kSession] = session;
    session.once('close', () => {
      this.sessions.delete(session);
      this._check();
    });
    if (this.draining) this._goaway(session);
  }

  /**
   * HTTP/2: session.close() sends GOAWAY (last-stream-id = the last stream it took), lets the open
   * streams finish and then closes. A stream the client sent before it saw the GOAWAY is refused
   * with REFUSED_STREAM, which RFC 9113 8.7 lets clients retry (browsers, curl, Go do; Node's
   * http2 client leaves it to the caller). A "shutdown notice" (GOAWAY with last-stream-id 2^31-1
   * first) would avoid that, but Node's session.goaway() makes nghttp2 refuse new streams from
   * the first GOAWAY on whatever its last-stream-id says (tried: same refusals).
   */
  _goaway(session) {
    if (!session.closed && !session.destroyed) session.close();
  }

  get activeRequests() {
    let n = 0;
    for (const c of this.conns.values()) n += c.active;
    for (const session of this.sessions) n += countStreams(session);
    return n;
  }

  get connections() {
    return this.conns.size;
  }

  drain({ idleGraceMs = 1000, timeoutMs = 0 } = {}) {
    if (this.drained) return this.drained;
    this.draining = true;
    const since = Date.now();
    closeListener(this.server);
    for (const l of this.extraListeners) closeListener(l);
    this.drained = new Promise(resolve => {
      this._resolve = resolve;
    });
    // HTTP/1 responses in flight that have not sent their headers yet close their connection too.
    for (const res of this.responses) {
      if (!res.headersSent) res.setHeader('Connection', 'close');
    }
    // HTTP/2: GOAWAY now; each session closes itself once its open streams are done.
    for (const session of this.sessions) this._goaway(session);
    const tick = () => {
      const now = Date.now();
      for (const conn of this.conns.values()) {
        if (conn.socket[kSession] || (conn.tls && conn.tls[kSession])) continue; // HTTP/2: see above
        if (conn.active === 0 && now - Math.max(conn.idleSince, since) >= idleGraceMs) conn.socket.destroy();
      }
    };
    this._timer = setInterval(tick, Math.max(10, Math.min(100, idleGraceMs / 2)));
    if (timeoutMs > 0) {
      this._deadline = setTimeout(() => {
        for (const conn of this.conns.values()) {
          this.forced++;
          conn.socket.destroy();
        }
        for (const session of this.sessions) session.destroy();
        this._check();
      }, timeoutMs);
    }
    this._check();
    return this.drained;
  }

  _check() {
    if (!this.draining || !this._resolve || this.conns.size !== 0 || this.sessions.size !== 0) return;
    clearInterval(this._timer);
    clearTimeout(this._deadline);
    const resolve = this._resolve;
    this._resolve = null;
    resolve({ forced: this.forced });
  }
}

function countStreams(session) {
  return session[kStreams] || 0;
}

function closeListener(server) {
  // net.Server's close, not http.Server's: that one also drops idle keep-alive connections at once
  // (Node >= 19). Safe on a server that is not listening (it only reports ERR_SERVER_NOT_RUNNING
  // to a callback, and we pass none).
  if (server.listening) net.Server.prototype.close.call(server);
}

/** The tracker of `server`, created on first use. */
function track(server) {
  if (!server[kTracker]) {
    Object.defineProperty(server, kTracker, { value: new Tracker(server), enumerable: false });
  }
  return server[kTracker];
}

function isTracked(server) {
  return Boolean(server && server[kTracker]);
}

module.exports = { track, isTracked, Tracker };
