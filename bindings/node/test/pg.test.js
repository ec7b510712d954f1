'use strict'
const { test } = require('node:test')
const assert = require('node:assert/strict')
const pg = require('pg')

const { relaybox, pgUrl, count, openOutbox, waitFor, unique } = require('./helpers')

test('enqueueWith writes inside the caller\'s node-postgres transaction', async (t) => {
  const { outbox, prefix } = await openOutbox(t)
  const topic = unique('pg-orders')
  const client = new pg.Client({ connectionString: pgUrl() })
  await client.connect()
  t.after(() => client.end())
  await client.query(`CREATE TABLE ${prefix}orders (id int8 PRIMARY KEY)`)

  await client.query('BEGIN')
  await client.query(`INSERT INTO ${prefix}orders (id) VALUES ($1)`, [1])
  await outbox.enqueueWith(client, { topic, key: '1', type: 'OrderPlaced', payload: { id: 1 } })
  await client.query('ROLLBACK')
  assert.equal(await count(`${prefix}orders`), 0)
  assert.equal(await count(`${prefix}outbox`), 0)

  const seen = []
  const relay = new relaybox.Relay(outbox, { pollInterval: 60000 }).start()
  const consumer = new relaybox.Consumer(outbox, topic, (message) => { seen.push(message) }, { group: 'pg' }).start()
  t.after(() => Promise.all([consumer.close(), relay.close()]))

  await client.query('BEGIN')
  await client.query(`INSERT INTO ${prefix}orders (id) VALUES ($1)`, [2])
  const id = await outbox.enqueueWith(client, { topic, key: '2', type: 'OrderPlaced', payload: { id: 2 } })
  assert.equal(await count(`${prefix}outbox`), 0, 'not visible before COMMIT')
  await client.query('COMMIT')
  assert.equal(await count(`${prefix}orders`), 1)
  // The relay polls only every minute: delivery within seconds shows that the
  // wake statement ran in the caller's transaction and woke it at commit.
  await waitFor('the committed event consumed', () => seen.length === 1, 10000)
  assert.equal(seen[0].id, id)
  assert.deepEqual(seen[0].json(), { id: 2 })
  assert.equal(seen[0].type, 'OrderPlaced')
})

test('enqueueWith rejects bad input before touching the connection', async (t) => {
  const { outbox } = await openOutbox(t)
  const queries = []
  const client = { query: async (sql) => { queries.push(sql) } }
  await assert.rejects(outbox.enqueueWith(client, { topic: 'no spaces', payload: 1 }),
    (err) => err instanceof relaybox.ValidationError && err.code === 'invalid_topic')
  assert.deepEqual(queries, [])
  await assert.rejects(outbox.enqueueWith({}, { topic: 't', payload: 1 }), TypeError)
})
