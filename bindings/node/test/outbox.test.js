'use strict'
const { test } = require('node:test')
const assert = require('node:assert/strict')

const { relaybox, count, openOutbox, waitFor, sleep, unique } = require('./helpers')

test('a transaction that throws rolls back its rows and its events', async (t) => {
  const { outbox, prefix } = await openOutbox(t)
  await outbox.transaction((tx) => tx.execute(`CREATE TABLE ${prefix}orders (id int8 PRIMARY KEY)`))
  const failure = new Error('payment declined')
  await assert.rejects(
    outbox.transaction(async (tx) => {
      await tx.execute(`INSERT INTO ${prefix}orders (id) VALUES ($1)`, [1])
      await tx.enqueue({ topic: 'orders', key: '1', type: 'OrderPlaced', payload: { id: 1 } })
      throw failure
    }),
    (err) => err === failure
  )
  assert.equal(await count(`${prefix}orders`), 0)
  assert.equal(await count(`${prefix}outbox`), 0)
  assert.equal(await outbox.pendingCount(), 0)
})

test('a committed event is delivered once, with its rows', async (t) => {
  const { outbox, prefix } = await openOutbox(t)
  const topic = unique('orders')
  await outbox.transaction((tx) => tx.execute(`CREATE TABLE ${prefix}orders (id int8 PRIMARY KEY)`))
  const id = await outbox.transaction(async (tx) => {
    await tx.execute(`INSERT INTO ${prefix}orders (id) VALUES ($1)`, [7])
    return tx.enqueue({ topic, key: '7', type: 'OrderPlaced', payload: { id: 7 }, headers: { source: 'shop' } })
  })
  assert.equal(await count(`${prefix}orders`), 1)
  const seen = []
  const relay = new relaybox.Relay(outbox).start()
  const consumer = new relaybox.Consumer(outbox, topic, async (message, tx) => {
    seen.push(message)
    await tx.execute(`INSERT INTO ${prefix}orders (id) VALUES ($1)`, [1000 + seen.length])
  }, { group: 'once' }).start()
  t.after(() => Promise.all([consumer.close(), relay.close()]))
  await waitFor('the event consumed', () => seen.length === 1)
  await sleep(300)
  assert.equal(seen.length, 1)
  const [message] = seen
  assert.equal(message.id, id)
  assert.equal(message.topic, topic)
  assert.equal(message.key, '7')
  assert.equal(message.type, 'OrderPlaced')
  assert.equal(message.contentType, 'application/json')
  assert.deepEqual(message.json(), { id: 7 })
  assert.equal(message.headers.source, 'shop')
  assert.ok(message.createdAt instanceof Date)
  await waitFor('the handler row committed', async () => (await count(`${prefix}orders`)) === 2)
  assert.equal(await count(`${prefix}inbox`), 1)
  assert.deepEqual(consumer.stats(), { processed: 1, duplicates: 0, retried: 0, deadLettered: 0 })
  const stats = relay.stats()
  assert.equal(stats.delivered, 1)
  // The batch it delivered was claimed.
  assert.ok(stats.claims >= stats.batches && stats.batches >= 1, JSON.stringify(stats))
})

test('payload forms follow MessageSpec and SQL values round-trip', async (t) => {
  const { outbox } = await openOutbox(t)
  const bytes = Buffer.from([0, 1, 2, 255])
  const rows = await outbox.transaction(async (tx) => {
    await tx.enqueue({ topic: 't', payload: bytes })
    await tx.enqueue({ topic: 't', payload: 'héllo' })
    await tx.enqueueBatch([{ topic: 't', payloadText: 'x', contentType: 'text/csv' }, { topic: 't', payload: [1, 2] }])
    return tx.query(`SELECT payload, content_type FROM ${outbox.tablePrefix}outbox ORDER BY seq`)
  })
  assert.deepEqual(rows.map((r) => [r.payload, r.content_type]), [
    [bytes, 'application/octet-stream'],
    [Buffer.from('héllo'), 'text/plain; charset=utf-8'],
    [Buffer.from('x'), 'text/csv'],
    [Buffer.from('[1,2]'), 'application/json']
  ])
  const when = new Date('2026-01-02T03:04:05.678Z')
  const [row] = await outbox.transaction((tx) => tx.query(
    'SELECT $1::int8 AS i, $2::int8 AS big, $3::float8 AS f, $4::text AS s, $5::bytea AS b, $6::jsonb AS j, ' +
      '$7::timestamptz AS ts, $8::bool AS ok, $9::text AS nothing',
    [42, 2n ** 60n, 1.5, 'text', bytes, { a: [1, 'b'] }, when, true, null]))
  assert.deepEqual(row, { i: 42, big: 2n ** 60n, f: 1.5, s: 'text', b: bytes, j: { a: [1, 'b'] }, ts: when, ok: true, nothing: null })
  assert.deepEqual(Object.keys(row), ['i', 'big', 'f', 's', 'b', 'j', 'ts', 'ok', 'nothing'])
})

test('bad input rejects with the right code and writes nothing', async (t) => {
  const { outbox } = await openOutbox(t, { maxPayloadBytes: 16 })
  const cases = [
    [{ topic: 'bad topic', payload: 1 }, relaybox.ValidationError, 'invalid_topic'],
    [{ topic: 't', payload: 'x'.repeat(17) }, relaybox.ValidationError, 'payload_too_large'],
    [{ topic: 't', payload: 1, headers: { 'bad header': 'v' } }, relaybox.ValidationError, 'invalid_header'],
    [{ topic: 't', payload: 1, kee: 'k' }, relaybox.ValidationError, 'invalid_message'],
    [{ topic: 't' }, relaybox.ValidationError, 'invalid_message'],
    [{ topic: 't', payload: 1, id: 'not-a-uuid' }, relaybox.ValidationError, 'invalid_message'],
    ['not an object', relaybox.ValidationError, 'invalid_message']
  ]
  for (const [message, Class, code] of cases) {
    await assert.rejects(
      outbox.transaction(async (tx) => {
        await tx.enqueue({ topic: 'good', payload: 'written first' })
        await tx.enqueue(message)
      }),
      (err) => err instanceof Class && err instanceof relaybox.RelayboxError && err.code === code && err.retryable === false,
      `${JSON.stringify(message)} should reject with ${code}`
    )
  }
  await assert.rejects(
    outbox.transaction((tx) => tx.enqueueBatch([{ topic: 'good', payload: 1 }, { topic: '', payload: 1 }])),
    (err) => err.code === 'invalid_topic'
  )
  await assert.rejects(
    outbox.transaction((tx) => tx.execute('SELECT $1::float8', [Number.NaN])),
    (err) => err instanceof relaybox.ValidationError && err.code === 'invalid_value'
  )
  await assert.rejects(
    outbox.transaction((tx) => tx.execute('SELECT * FROM no_such_table')),
    (err) => err instanceof relaybox.StoreError && err.code === 'database'
  )
  await assert.rejects(
    relaybox.Outbox.open('postgres://nobody:secret-pw@127.0.0.1:1/x', { connectTimeout: 500 }),
    (err) => err instanceof relaybox.RelayboxError && !err.message.includes('secret-pw')
  )
  await assert.rejects(
    relaybox.Outbox.open('postgres://127.0.0.1/x', { partitions: 0 }),
    (err) => err instanceof relaybox.ConfigError && err.code === 'invalid_config'
  )
  await assert.rejects(
    relaybox.Outbox.open(process.env.RELAYBOX_TEST_DATABASE_URL, { maxConnections: 2, minConnections: 3 }),
    (err) => err instanceof relaybox.ConfigError && err.code === 'invalid_config' && /min_connections/.test(err.message)
  )
  assert.throws(() => new relaybox.Relay(outbox, { batchSize: 0 }).start(),
    (err) => err instanceof relaybox.ConfigError && err.code === 'invalid_config')
  assert.throws(() => new relaybox.Consumer(outbox, 't', async () => {}, { group: 'g', retryDealy: 5 }).start(),
    (err) => err instanceof relaybox.ConfigError && err.code === 'invalid_config')
  assert.equal(await outbox.pendingCount(), 0)
})

test('a closed outbox rejects with ClosedError', async (t) => {
  const { outbox } = await openOutbox(t)
  await outbox.close()
  assert.equal(outbox.closed, true)
  await assert.rejects(outbox.enqueue({ topic: 't', payload: 1 }),
    (err) => err instanceof relaybox.ClosedError && err.code === 'closed')
})

test('a Rust panic surfaces as InternalError instead of aborting Node', async () => {
  const { native } = require('../lib/native')
  const { fromNative } = require('../lib/errors')
  for (const asynchronous of [false, true]) {
    await assert.rejects(
      native.panicForTests('boom for tests', asynchronous).catch((err) => { throw fromNative(err) }),
      (err) => err instanceof relaybox.InternalError && err.code === 'internal' && err.message.includes('boom for tests')
    )
  }
})

test('an idempotency key writes once and resolves to the first id', async (t) => {
  const { outbox } = await openOutbox(t)
  const first = await outbox.transaction((tx) =>
    tx.enqueue({ topic: 'orders', payload: { id: 1 }, idempotencyKey: 'order-1-placed' }))
  const again = await outbox.transaction((tx) =>
    tx.enqueue({ topic: 'orders', payload: { id: 1 }, idempotencyKey: 'order-1-placed' }))
  assert.equal(again, first)
  const ids = await outbox.transaction((tx) => tx.enqueueBatch([
    { topic: 'orders', payload: 2, idempotencyKey: 'order-2-placed' },
    { topic: 'orders', payload: 3, idempotencyKey: 'order-2-placed' },
    { topic: 'invoices', payload: 4, idempotencyKey: 'order-1-placed' }
  ]))
  assert.equal(ids[1], ids[0])
  assert.notEqual(ids[2], first)
  assert.equal(await outbox.pendingCount(), 3)
})
