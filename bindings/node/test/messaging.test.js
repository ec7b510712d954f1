'use strict'
const { test } = require('node:test')
const assert = require('node:assert/strict')
const { z } = require('zod')

const { relaybox, pgUrl, count, openOutbox, waitFor, sleep, unique, kafkaBootstrap } = require('./helpers')

function messagingFor (outbox, options = {}) {
  return relaybox.createMessaging({ broker: 'database', outbox, source: 'user-service', defaultTopic: unique('events'), ...options })
}

test('publishEvent and onEvent: envelope, headers, key, schema-parsed data, handler transaction', async (t) => {
  const { outbox, prefix } = await openOutbox(t)
  const messaging = messagingFor(outbox)
  t.after(() => messaging.close())
  await outbox.transaction((tx) => tx.execute(`CREATE TABLE ${prefix}welcomed (email text PRIMARY KEY)`))
  const User = z.object({ id: z.number(), email: z.string().email() })
  const received = []
  messaging.onEvent('user.created', async (user, { event, tx, message }) => {
    received.push({ user, event, message })
    await tx.execute(`INSERT INTO ${prefix}welcomed (email) VALUES ($1)`, [user.email])
    await messaging.publishEvent('user.welcomed', { id: user.id })
  }, { schema: User })
  const welcomed = []
  messaging.onEvent('user.welcomed', (data) => { welcomed.push(data) })
  await messaging.start()

  const sent = await messaging.publishEvent('user.created', { id: 1, email: 'a@example.com', extra: true }, { key: 1, metadata: { trace: 'x' } })
  await waitFor('user.welcomed handled', () => welcomed.length === 1)
  assert.equal(received.length, 1)
  const [{ user, event, message }] = received
  assert.deepEqual(user, { id: 1, email: 'a@example.com' }, 'the schema\'s parse result')
  assert.equal(event.id, sent.id)
  assert.equal(event.name, 'user.created')
  assert.equal(event.source, 'user-service')
  assert.deepEqual(event.metadata, { trace: 'x' })
  assert.equal(message.key, '1')
  assert.equal(message.type, 'user.created')
  assert.equal(message.contentType, 'application/json')
  assert.deepEqual(message.headers, { event_name: 'user.created', event_id: sent.id, event_source: 'user-service' })
  const envelope = message.json()
  assert.deepEqual(Object.keys(envelope), ['id', 'name', 'data', 'timestamp', 'source', 'metadata'])
  assert.match(envelope.timestamp, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$/)
  assert.deepEqual(welcomed, [{ id: 1 }])
  assert.equal(await count(`${prefix}welcomed`), 1)
})

test('onEvent retries with maxRetries and retryDelay, and a schema mismatch dead-letters at once', async (t) => {
  const { outbox } = await openOutbox(t)
  const messaging = messagingFor(outbox)
  t.after(() => messaging.close())
  let failing = 0
  let parsed = 0
  messaging.onEvent('flaky', async () => { failing += 1; throw new Error('down') }, { maxRetries: 2, retryDelay: 10 })
  const schema = { parse (value) { parsed += 1; if (typeof value.n !== 'number') throw new TypeError('n must be a number'); return value } }
  messaging.onEvent('typed', async () => assert.fail('must not run'), { schema, maxRetries: 5 })
  await messaging.start()
  await messaging.publishEvent('flaky', {})
  await messaging.publishEvent('typed', { n: 'one' })
  await waitFor('both dead-lettered', async () => (await outbox.deadLetters()).length === 2)
  assert.equal(failing, 3)
  assert.equal(parsed, 1, 'a schema mismatch is not retried')
  const errors = (await outbox.deadLetters()).map((l) => l.lastError).join('\n')
  assert.match(errors, /Error: down/)
  assert.match(errors, /does not match the schema of typed: TypeError: n must be a number/)
})

test('publishEvent joins the transaction it is given: a rollback leaves no event', async (t) => {
  const { outbox } = await openOutbox(t)
  const messaging = messagingFor(outbox)
  t.after(() => messaging.close())
  await assert.rejects(outbox.transaction(async (tx) => {
    await messaging.publishEvent('order.placed', { id: 1 }, { tx })
    throw new Error('rolled back')
  }), /rolled back/)
  await assert.rejects(messaging.transaction(async () => {
    await messaging.publishEvent('order.placed', { id: 2 })
    throw new Error('rolled back too')
  }), /rolled back too/)
  assert.equal(await outbox.pendingCount(), 0)
  await messaging.transaction(() => messaging.publishEvent('order.placed', { id: 3 }))
  assert.equal(await outbox.pendingCount(), 1)
})

test('settings: unknown brokers and bad handler options are ConfigErrors', async () => {
  assert.throws(() => relaybox.createMessaging({ broker: 'carrier-pigeon' }),
    (err) => err instanceof relaybox.ConfigError && err.code === 'invalid_config' && /rabbitmq, redis/.test(err.message))
  const messaging = relaybox.createMessaging({ broker: 'database', databaseUrl: pgUrl() })
  assert.throws(() => messaging.onEvent('x', () => {}, { maxRetries: -1 }), relaybox.ConfigError)
  assert.throws(() => messaging.onEvent('x', () => {}, { retryDelay: 0 }), relaybox.ConfigError)
  assert.throws(() => messaging.onEvent('x', () => {}, { schema: {} }), relaybox.ConfigError)
  const saved = { RELAYBOX_DATABASE_URL: process.env.RELAYBOX_DATABASE_URL, DATABASE_URL: process.env.DATABASE_URL }
  delete process.env.RELAYBOX_DATABASE_URL
  delete process.env.DATABASE_URL
  let noDatabase
  try {
    noDatabase = relaybox.createMessaging({ broker: 'database' })
  } finally {
    for (const [name, value] of Object.entries(saved)) if (value !== undefined) process.env[name] = value
  }
  await assert.rejects(noDatabase.publishEvent('x'),
    (err) => err instanceof relaybox.ConfigError && /RELAYBOX_DATABASE_URL/.test(err.message))
  await assert.rejects(messaging.publishEvent('x', {}, { topic: 'bad topic' }),
    (err) => err instanceof relaybox.ValidationError && err.code === 'invalid_topic')
  await messaging.close()
})

test('the kafka broker carries events through the real Kafka', async (t) => {
  const bootstrapServers = await kafkaBootstrap()
  const { outbox } = await openOutbox(t)
  const messaging = messagingFor(outbox, { broker: 'kafka', bootstrapServers })
  t.after(() => messaging.close())
  const got = []
  messaging.onEvent('ping', (data) => { got.push(data) })
  await messaging.start()
  await messaging.publishEvent('ping', { n: 1 }, { key: 'a' })
  await waitFor('ping over Kafka', () => got.length === 1, 60000)
  await sleep(200)
  assert.deepEqual(got, [{ n: 1 }])
  assert.equal(messaging.stats().relay.delivered, 1)
})
