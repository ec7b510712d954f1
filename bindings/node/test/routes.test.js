'use strict'
const { test } = require('node:test')
const assert = require('node:assert/strict')

const { relaybox, openOutbox, waitFor } = require('./helpers')

test('a relay given routes serves their topics only, each to its destination', async (t) => {
  const { outbox, prefix } = await openOutbox(t)
  await outbox.transaction(async (tx) => {
    for (const topic of ['orders.created', 'billing', 'audit']) {
      await tx.enqueueBatch([0, 1, 2].map((n) => ({ topic, key: `k${n}`, payload: { n } })))
    }
  })
  const relay = new relaybox.Relay(outbox, {
    transport: {
      routes: [
        { topics: ['orders.*'], destination: 'eu.{topic}' },
        { topics: ['billing'], transport: 'database' }
      ]
    },
    pollInterval: 50
  }).start()
  t.after(() => relay.close())
  await waitFor('the routed topics delivered', async () => (await outbox.pendingCount()) === 3)
  const status = await outbox.status()
  const audit = status.topics.find((topic) => topic.topic === 'audit')
  assert.equal(audit.pending, 3)
  assert.equal(audit.served, false)
  const logged = await outbox.transaction((tx) =>
    tx.query(`SELECT topic, count(*)::int AS n FROM ${prefix}log GROUP BY topic ORDER BY topic`))
  assert.deepEqual(logged.map((r) => [r.topic, r.n]), [['billing', 3], ['eu.orders.created', 3]])
})

test('bad routes are a ConfigError naming the problem', async (t) => {
  const { outbox } = await openOutbox(t)
  assert.throws(() => new relaybox.Relay(outbox, { transport: { routes: 'orders' } }).start(), relaybox.ConfigError)
  assert.throws(
    () => new relaybox.Relay(outbox, { transport: { routes: [{ topics: ['bad topic'] }] } }).start(),
    (err) => err instanceof relaybox.ConfigError && /topic pattern/.test(err.message)
  )
})
