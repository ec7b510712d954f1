'use strict'
const { test } = require('node:test')
const assert = require('node:assert/strict')

const { relaybox, count, openOutbox, waitFor, sleep, unique } = require('./helpers')

async function relayed (t, outbox, messages) {
  await outbox.transaction((tx) => tx.enqueueBatch(messages))
  const relay = new relaybox.Relay(outbox).start()
  t.after(() => relay.close())
  await waitFor('relayed', () => relay.stats().delivered === messages.length)
}

test('a rejecting handler is retried, then the message is dead-lettered', async (t) => {
  const { outbox, prefix } = await openOutbox(t)
  const topic = unique('retry')
  await outbox.transaction((tx) => tx.execute(`CREATE TABLE ${prefix}effects (n int8)`))
  await relayed(t, outbox, [{ topic, key: 'k', type: 'Failing', payload: { n: 1 } }])
  let calls = 0
  const consumer = new relaybox.Consumer(outbox, topic, async (message, tx) => {
    calls += 1
    await tx.execute(`INSERT INTO ${prefix}effects (n) VALUES ($1)`, [calls])
    await sleep(5)
    throw new RangeError(`attempt ${calls} failed`)
  }, { group: 'retry', maxRetries: 2, retryDelay: 10, retryDelayMax: 20 }).start()
  t.after(() => consumer.close())
  await waitFor('dead-lettered', () => consumer.stats().deadLettered === 1)
  assert.equal(calls, 3, 'the first attempt and two retries')
  assert.deepEqual(consumer.stats(), { processed: 0, duplicates: 0, retried: 2, deadLettered: 1 })
  assert.equal(await count(`${prefix}effects`), 0, 'a failed attempt\'s writes roll back')
  const letters = await outbox.deadLetters()
  assert.equal(letters.length, 1)
  assert.equal(letters[0].message.topic, topic)
  assert.match(letters[0].origin, /consumer/)
  assert.match(letters[0].lastError, /RangeError: attempt 3 failed/)
})

test('Reject dead-letters at once; a non-Error rejection is described', async (t) => {
  const { outbox } = await openOutbox(t)
  const topic = unique('reject')
  await relayed(t, outbox, [
    { topic, key: 'a', type: 'Reject', payload: 1 },
    { topic, key: 'b', type: 'Throw', payload: 2 }
  ])
  const calls = { Reject: 0, Throw: 0 }
  const consumer = new relaybox.Consumer(outbox, topic, async (message) => {
    calls[message.type] += 1
    if (message.type === 'Reject') throw new relaybox.Reject('not for us')
    throw 'a string' // eslint-disable-line no-throw-literal
  }, { group: 'reject', maxRetries: 1, retryDelay: 10 }).start()
  t.after(() => consumer.close())
  await waitFor('both dead-lettered', () => consumer.stats().deadLettered === 2)
  assert.deepEqual(calls, { Reject: 1, Throw: 2 })
  const errors = Object.fromEntries((await outbox.deadLetters()).map((l) => [l.message.type, l.lastError]))
  assert.match(errors.Throw, /non-Error rejection: a string/)
  assert.match(errors.Reject, /not for us/)
})

test('the handler\'s promise is awaited before the message is acknowledged', async (t) => {
  const { outbox, prefix } = await openOutbox(t)
  const topic = unique('await')
  await outbox.transaction((tx) => tx.execute(`CREATE TABLE ${prefix}done (id text PRIMARY KEY)`))
  await relayed(t, outbox, [{ topic, key: 'k', payload: 1 }])
  let release
  const gate = new Promise((resolve) => { release = resolve })
  let started = false
  const consumer = new relaybox.Consumer(outbox, topic, async (message, tx) => {
    started = true
    await gate
    await tx.execute(`INSERT INTO ${prefix}done (id) VALUES ($1)`, [message.id])
  }, { group: 'await' }).start()
  t.after(() => consumer.close())
  await waitFor('the handler started', () => started)
  await sleep(300)
  assert.equal(consumer.stats().processed, 0, 'not processed while the promise is pending')
  assert.equal(await count(`${prefix}inbox`), 0)
  release()
  await waitFor('processed', () => consumer.stats().processed === 1)
  assert.equal(await count(`${prefix}done`), 1)
  assert.equal(await count(`${prefix}inbox`), 1)
})

test('a synchronous handler works too, and events of one key keep their order', async (t) => {
  const { outbox } = await openOutbox(t)
  const topic = unique('order')
  const messages = []
  for (let i = 0; i < 40; i++) messages.push({ topic, key: `k${i % 4}`, payload: { i } })
  await relayed(t, outbox, messages)
  const seen = {}
  const consumer = new relaybox.Consumer(outbox, topic, (message) => {
    (seen[message.key] ??= []).push(message.json().i)
  }, { group: 'order', concurrency: 4 }).start()
  t.after(() => consumer.close())
  await waitFor('all processed', () => consumer.stats().processed === 40)
  for (const [key, numbers] of Object.entries(seen)) {
    assert.deepEqual(numbers, [...numbers].sort((a, b) => a - b), `order of ${key}`)
    assert.equal(numbers.length, 10)
  }
})
