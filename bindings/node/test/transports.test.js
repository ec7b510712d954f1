'use strict'
const { test } = require('node:test')
const assert = require('node:assert/strict')

const { relaybox, openOutbox, waitFor, sleep, unique, requiredEnv } = require('./helpers')

/** The brokers other than Kafka, each switched on with one setting. */
const BROKERS = [
  { name: 'rabbitmq', transport: () => relaybox.rabbitmq({ url: requiredEnv('RELAYBOX_RABBITMQ_URL') }), urlOption: () => ({ rabbitmqUrl: requiredEnv('RELAYBOX_RABBITMQ_URL') }) },
  { name: 'redis', transport: () => relaybox.redis({ url: requiredEnv('RELAYBOX_REDIS_URL') }), urlOption: () => ({ redisUrl: requiredEnv('RELAYBOX_REDIS_URL') }) }
]

for (const broker of BROKERS) {
  test(`relays to the real ${broker.name} and consumes back once per message`, async (t) => {
    const transport = broker.transport()
    const { outbox, prefix } = await openOutbox(t)
    const topic = unique(`nd_${broker.name}`)
    await outbox.transaction((tx) => tx.execute(`CREATE TABLE ${prefix}seen (id text PRIMARY KEY, key text)`))
    const order = []
    const consumer = new relaybox.Consumer(outbox, topic, async (message, tx) => {
      order.push([message.key, message.json().n])
      await tx.execute(`INSERT INTO ${prefix}seen VALUES ($1, $2)`, [message.id, message.key])
    }, { group: unique('nd-group'), transport }).start()
    t.after(() => consumer.close())
    const relay = new relaybox.Relay(outbox, { transport }).start()
    t.after(() => relay.close())

    const ids = await outbox.transaction((tx) => tx.enqueueBatch(
      Array.from({ length: 20 }, (_, i) => ({ topic, key: `k${i % 2}`, type: 'Numbered', payload: { n: i } }))))
    await outbox.transaction(async (tx) => {
      await tx.enqueue({ topic, key: 'k0', payload: { n: -1 } })
      throw new Error('roll back')
    }).catch(() => {})
    await waitFor(`consumed from ${broker.name}`, () => consumer.stats().processed >= 20, 60000)
    await sleep(300)

    const seen = await outbox.transaction((tx) => tx.query(`SELECT id FROM ${prefix}seen`))
    assert.deepEqual(seen.map((r) => r.id).sort(), [...ids].sort(), 'each committed message once, the rolled-back one never')
    for (const key of ['k0', 'k1']) {
      const numbers = order.filter(([k]) => k === key).map(([, n]) => n)
      assert.deepEqual(numbers, [...numbers].sort((a, b) => a - b), `order of ${key}`)
    }
  })

  test(`createMessaging({broker: '${broker.name}'}) carries events through the real server`, async (t) => {
    const { outbox } = await openOutbox(t)
    const messaging = relaybox.createMessaging({ broker: broker.name, ...broker.urlOption(), outbox, source: 'node-tests', defaultTopic: unique('events') })
    t.after(() => messaging.close())
    const got = []
    messaging.onEvent('ping', (data, { event }) => { got.push([data, event.source]) })
    await messaging.start()
    await messaging.publishEvent('ping', { n: 1 }, { key: 'a' })
    await waitFor(`ping over ${broker.name}`, () => got.length === 1, 60000)
    await sleep(200)
    assert.deepEqual(got, [[{ n: 1 }, 'node-tests']])
    assert.equal(messaging.settings.broker, broker.name)
  })
}

test('an unknown transport rejects with ConfigError', async (t) => {
  const { outbox } = await openOutbox(t)
  assert.throws(() => new relaybox.Relay(outbox, { transport: { carrierPigeon: {} } }).start(),
    (err) => err instanceof relaybox.ConfigError && err.code === 'invalid_config')
})
