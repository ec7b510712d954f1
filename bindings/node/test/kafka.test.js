'use strict'
const { test } = require('node:test')
const assert = require('node:assert/strict')

const { relaybox, kafkaBootstrap, count, openOutbox, waitFor, unique } = require('./helpers')

test('relays to the real Kafka and consumes back once, in order per key', async (t) => {
  const servers = await kafkaBootstrap()
  const { outbox, prefix } = await openOutbox(t)
  const topic = unique('nd-orders')
  const transport = relaybox.kafka({ bootstrapServers: servers, createTopics: true })
  await outbox.transaction((tx) => tx.execute(`CREATE TABLE ${prefix}seen (id text PRIMARY KEY, key text)`))
  const ids = await outbox.transaction((tx) => tx.enqueueBatch(
    Array.from({ length: 30 }, (_, i) => ({ topic, key: `k${i % 3}`, type: 'Numbered', payload: { n: i } }))))

  // The timer measures the event loop while the relay and the consumer wait on the broker.
  let longest = 0
  let last = performance.now()
  const timer = setInterval(() => { const now = performance.now(); longest = Math.max(longest, now - last); last = now }, 10)
  t.after(() => clearInterval(timer))

  const relay = new relaybox.Relay(outbox, { transport }).start()
  t.after(() => relay.close())
  await waitFor('relayed to Kafka', () => relay.stats().delivered === 30, 60000)

  const order = []
  const consumer = new relaybox.Consumer(outbox, topic, async (message, tx) => {
    assert.equal(message.type, 'Numbered')
    order.push([message.key, message.json().n])
    await tx.execute(`INSERT INTO ${prefix}seen VALUES ($1, $2)`, [message.id, message.key])
  }, { group: 'nd-kafka', transport }).start()
  t.after(() => consumer.close())
  await waitFor('consumed from Kafka', () => consumer.stats().processed === 30, 60000)

  assert.equal(await count(`${prefix}seen`), 30)
  const seenIds = await outbox.transaction((tx) => tx.query(`SELECT id FROM ${prefix}seen`))
  assert.deepEqual(seenIds.map((r) => r.id).sort(), [...ids].sort())
  for (const key of ['k0', 'k1', 'k2']) {
    const numbers = order.filter(([k]) => k === key).map(([, n]) => n)
    assert.deepEqual(numbers, [...numbers].sort((a, b) => a - b), `order of ${key}`)
  }
  assert.ok(longest < 500, `longest event-loop gap during the Kafka round trip: ${longest.toFixed(0)} ms`)
})

test('invalid Kafka settings reject with ConfigError when the relay starts', async (t) => {
  const { outbox } = await openOutbox(t)
  assert.throws(() => new relaybox.Relay(outbox, { transport: { kafka: { bootstrapServers: '' } } }).start(),
    (err) => err instanceof relaybox.ConfigError && err.code === 'invalid_config')
})
