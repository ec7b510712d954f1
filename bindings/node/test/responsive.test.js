'use strict'
const { test } = require('node:test')
const assert = require('node:assert/strict')
const net = require('node:net')

const { relaybox, pgUrl, openOutbox } = require('./helpers')

/** Counts ticks of a 10 ms interval while `body` runs; returns [ticks, longest gap in ms]. */
async function ticksDuring (body) {
  let ticks = 0
  let last = performance.now()
  let longest = 0
  const timer = setInterval(() => {
    const now = performance.now()
    longest = Math.max(longest, now - last)
    last = now
    ticks += 1
  }, 10)
  try {
    await body()
  } finally {
    clearInterval(timer)
  }
  return [ticks, longest]
}

test('the event loop keeps running during a long database query', async (t) => {
  const { outbox } = await openOutbox(t)
  const started = performance.now()
  const [ticks, longest] = await ticksDuring(() =>
    outbox.transaction((tx) => tx.query('SELECT pg_sleep(1)::text AS slept')))
  assert.ok(performance.now() - started >= 1000, 'the query took its second')
  assert.ok(ticks >= 20, `a 10 ms timer fired ${ticks} times during a 1 s query`)
  assert.ok(longest < 500, `longest gap between ticks: ${longest.toFixed(0)} ms`)
})

test('the event loop keeps running while a database server does not answer', async (t) => {
  // A server that accepts connections and never says a word: the connect waits for its timeout.
  const sockets = []
  const silent = net.createServer((socket) => sockets.push(socket))
  await new Promise((resolve) => silent.listen(0, '127.0.0.1', resolve))
  t.after(() => { sockets.forEach((s) => s.destroy()); silent.close() })
  const { port } = silent.address()
  const started = performance.now()
  const [ticks] = await ticksDuring(() => assert.rejects(
    relaybox.Outbox.open(`postgres://postgres@127.0.0.1:${port}/x`, { connectTimeout: 700 }),
    (err) => err instanceof relaybox.RelayboxError && err.retryable === true))
  assert.ok(performance.now() - started >= 600, 'the connect waited for its timeout')
  assert.ok(sockets.length >= 1, 'relaybox connected to the silent server')
  assert.ok(ticks >= 15, `a 10 ms timer fired ${ticks} times during a 700 ms connect timeout`)
})

test('the event loop keeps running while a consumer waits for messages', async (t) => {
  const { outbox } = await openOutbox(t)
  const consumer = new relaybox.Consumer(outbox, 'idle', () => {}, { group: 'idle', pollInterval: 50 }).start()
  const [ticks] = await ticksDuring(() => new Promise((resolve) => setTimeout(resolve, 500)))
  await consumer.close()
  assert.ok(ticks >= 15, `a 10 ms timer fired ${ticks} times in 500 ms`)
  assert.equal(consumer.running, false)
  assert.ok(pgUrl())
})
