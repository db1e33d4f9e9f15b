'use strict';

// What a draining Egg worker lets finish: a slow request, a running scheduled task.

const assert = require('node:assert/strict');
const path = require('node:path');
const { test } = require('node:test');
const h = require('./helpers');

test('a slow request in flight when a rollover starts completes with 200', { timeout: 120000 }, async t => {
  const sb = h.makeSandbox('slow');
  sb.setVersion('2.0.0');
  const hf = await h.startHandoff(sb, { workers: 2 });
  try {
    const slowMs = 4000;
    const t0 = Date.now();
    const slow = h.get(hf.port, `/slow?ms=${slowMs}`, { timeoutMs: 30000 });
    await h.sleep(500); // the request has reached a worker
    sb.setVersion('2.0.1');
    const r = await h.reload(hf);
    const reloadDone = Date.now();
    assert.equal(r.code, 0, `reload exited ${r.code}\nstderr: ${r.stderr}\n${hf.tail()}`);
    await h.waitForVersion(hf.port, '2.0.1');
    const res = await slow;
    const slowDone = Date.now();
    t.diagnostic(`reload took ${r.ms} ms; slow request answered ${slowDone - t0} ms after it was sent, ` +
      `${slowDone - reloadDone} ms after the new generation served`);
    assert.equal(res.status, 200, JSON.stringify(res.body));
    assert.equal(res.body.version, '2.0.0', 'the old generation answers the request it took');
    assert.ok(res.body.sleptMs >= slowMs, JSON.stringify(res.body));
    assert.ok(reloadDone < slowDone, 'the rollover had finished before the slow request did (else it tested nothing)');
    assert.equal(res.headers.connection, 'close', 'a draining worker closes the connection after answering');
  } finally {
    await hf.stop();
    sb.cleanup();
  }
});

test('a scheduled task running when a rollover starts logs its end', { timeout: 120000 }, async t => {
  const sb = h.makeSandbox('schedule');
  sb.setVersion('3.0.0');
  const schedLog = path.join(sb.dir, 'schedule.log');
  const hf = await h.startHandoff(sb, {
    workers: 2,
    env: { EGG_SCHEDULE_INTERVAL: '2s', EGG_SCHEDULE_MS: '3000', EGG_SCHEDULE_LOG: schedLog },
  });
  try {
    // Wait for a run that has started and not ended yet.
    const running = await h.waitUntil('a running scheduled task', () => {
      const lines = h.readScheduleLog(schedLog);
      const ended = new Set(lines.filter(l => l.event === 'end').map(l => l.id));
      return lines.find(l => l.event === 'start' && !ended.has(l.id) && Date.now() - l.at < 2000);
    }, 20000, 20);
    sb.setVersion('3.0.1');
    const reloadStart = Date.now();
    const r = await h.reload(hf);
    assert.equal(r.code, 0, `reload exited ${r.code}\nstderr: ${r.stderr}\n${hf.tail()}`);
    await h.waitForVersion(hf.port, '3.0.1');

    // The old worker exits once its task is done.
    await h.waitUntil(`old worker ${running.pid} to exit`, () => !h.pidAlive(running.pid), 30000);
    const lines = h.readScheduleLog(schedLog);
    const end = lines.find(l => l.event === 'end' && l.id === running.id);
    assert.ok(end, `task ${running.id} (pid ${running.pid}) started at ${running.at} never logged its end:\n` +
      lines.map(l => JSON.stringify(l)).join('\n'));
    assert.ok(end.at > reloadStart, 'the task was still running when the rollover started');
    assert.ok(end.at - running.at >= 3000, 'the task ran its full length');

    // Every run of the old generation finished, none was cut off.
    const oldStarts = lines.filter(l => l.event === 'start' && l.version === '3.0.0');
    for (const s of oldStarts) {
      assert.ok(lines.some(l => l.event === 'end' && l.id === s.id), `run ${s.id} of the old generation never ended`);
    }
    // With 2 workers the job runs once per tick: only worker 0 of a generation runs it.
    const workers = new Set(lines.map(l => l.worker));
    assert.deepEqual([ ...workers ], [ '0' ], `runs came from workers ${[ ...workers ]}`);
    t.diagnostic(`${oldStarts.length} runs of the old generation, all ended; task ${running.id} ended ` +
      `${end.at - reloadStart} ms after the rollover started`);
  } finally {
    await hf.stop();
    sb.cleanup();
  }
});
