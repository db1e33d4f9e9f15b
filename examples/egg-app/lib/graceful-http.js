'use strict';

/**
 * An http.Server that can drain without failing a single request of a keep-alive client.
 *
 * `server.close()` alone is not enough: since Node 19 it also closes every idle keep-alive
 * connection at once, and a client that is just sending its next request on such a connection
 * gets ECONNRESET / "socket hang up". So draining goes:
 *   1. stop accepting (close the listening fd; the socket itself lives on in handoff and the
 *      other workers, which keep accepting);
 *   2. answer every request still arriving on an open connection, and every in-flight one that
 *      has not sent its headers yet, with `Connection: close`, so the client closes it cleanly;
 *   3. close connections that stay idle for `idleGraceMs` (the same race a keep-alive timeout
 *      has, only once per connection);
 *   4. resolve when no connection is left.
 */

const http = require('http');
const net = require('net');

const kActive = Symbol('activeRequests');
const kIdleSince = Symbol('idleSince');

class GracefulServer {
  /**
   * @param {(req: http.IncomingMessage, res: http.ServerResponse) => void} handler
   * @param {http.ServerOptions} [options]
   */
  constructor(handler, options = {}) {
    this.sockets = new Set();
    this.responses = new Set();
    this.draining = false;
    this.server = http.createServer(options, (req, res) => this._onRequest(req, res, handler));
    this.server.on('connection', socket => this._onConnection(socket));
  }

  _onConnection(socket) {
    socket[kActive] = 0;
    socket[kIdleSince] = Date.now();
    this.sockets.add(socket);
    socket.once('close', () => {
      this.sockets.delete(socket);
      this._check();
    });
  }

  _onRequest(req, res, handler) {
    const socket = req.socket;
    socket[kActive]++;
    this.responses.add(res);
    if (this.draining) res.setHeader('Connection', 'close');
    res.once('close', () => {
      this.responses.delete(res);
      socket[kActive]--;
      socket[kIdleSince] = Date.now();
    });
    handler(req, res);
  }

  /** Listens on an inherited fd (handoff / systemd) or a port; resolves once listening. */
  listen(where) {
    return new Promise((resolve, reject) => {
      const onError = err => reject(err);
      this.server.once('error', onError);
      this.server.listen(where, () => {
        this.server.removeListener('error', onError);
        resolve();
      });
    });
  }

  get activeRequests() {
    return this.responses.size;
  }

  /**
   * @param {object} [opts]
   * @param {number} [opts.idleGraceMs] how long an idle keep-alive connection may stay open
   * @returns {Promise<void>} once every connection is closed
   */
  drain({ idleGraceMs = 1000 } = {}) {
    if (this._drained) return this._drained;
    this.draining = true;
    const since = Date.now();
    // net.Server's close, not http.Server's: the latter would also drop idle connections at once.
    if (this.server.listening) net.Server.prototype.close.call(this.server);
    this._drained = new Promise(resolve => {
      this._resolve = resolve;
    });
    // Responses in flight that have not sent their headers yet close their connection too.
    for (const res of this.responses) {
      if (!res.headersSent) res.setHeader('Connection', 'close');
    }
    this._timer = setInterval(() => {
      const now = Date.now();
      for (const socket of this.sockets) {
        if (socket[kActive] === 0 && now - Math.max(socket[kIdleSince], since) >= idleGraceMs) socket.destroy();
      }
    }, Math.max(10, Math.min(100, idleGraceMs / 2)));
    this._check();
    return this._drained;
  }

  _check() {
    if (this.draining && this._resolve && this.sockets.size === 0) {
      clearInterval(this._timer);
      this._resolve();
      this._resolve = null;
    }
  }
}

module.exports = { GracefulServer };
