'use strict';

const { Controller } = require('egg');

const MAX_SLOW_MS = 10 * 60 * 1000;

class HomeController extends Controller {
  // Which release, which process, which handoff generation answered.
  identity() {
    const { app } = this;
    return {
      version: app.config.pkg.version,
      pid: process.pid,
      generation: process.env.HANDOFF_GENERATION ?? null,
      worker: process.env.HANDOFF_WORKER ?? null,
    };
  }

  async index() {
    this.ctx.body = this.identity();
  }

  // GET /slow?ms=N answers after N ms (default 2000): an in-flight request for drain tests.
  async slow() {
    const { ctx } = this;
    let ms = ctx.query.ms === undefined ? 2000 : Number(ctx.query.ms);
    if (!Number.isFinite(ms) || ms < 0) ctx.throw(400, 'ms must be a non-negative number');
    ms = Math.min(ms, MAX_SLOW_MS);
    const started = Date.now();
    await new Promise(resolve => setTimeout(resolve, ms));
    ctx.body = { ...this.identity(), sleptMs: Date.now() - started };
  }
}

module.exports = HomeController;
