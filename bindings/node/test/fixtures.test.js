'use strict'
/** The cross-language fixtures of tests/fixtures: the same files every binding reads. */
const { test } = require('node:test')
const assert = require('node:assert/strict')
const fs = require('node:fs')
const path = require('node:path')

const { relaybox, openOutbox, waitFor } = require('./helpers')

const FIXTURES = path.join(__dirname, '../../../tests/fixtures')
const read = (name) => fs.readFileSync(path.join(FIXTURES, name), 'utf8')

/** The spec of a canonical message (without its timestamps, which enqueue sets). */
function specOf (fields) {
  return {
    id: fields.id,
    topic: fields.topic,
    key: fields.key,
    type: fields.type,
    payloadBase64: fields.payload,
    contentType: fields.content_type,
    headers: fields.headers
  }
}

/** The spec of a canonical message with its timestamps. */
function fullSpecOf (fields) {
  return { ...specOf(fields), createdAt: fields.created_at, availableAt: fields.available_at }
}

test('partitionForKey matches partitions.json', () => {
  const cases = JSON.parse(read('partitions.json'))
  assert.ok(cases.length > 10)
  for (const { key, partitions, partition } of cases) {
    assert.equal(relaybox.partitionForKey(key, partitions), partition, `${JSON.stringify(key)} among ${partitions}`)
  }
})

test('every invalid message of invalid_messages.json rejects with its code and writes nothing', async (t) => {
  const { outbox } = await openOutbox(t)
  const { outbox: limited } = await openOutbox(t, { maxPayloadBytes: 16 })
  const cases = JSON.parse(read('invalid_messages.json'))
  assert.ok(cases.some(({ name }) => name === 'available_at before created_at'))
  for (const { name, message, error_code: code, max_payload_bytes: limit } of cases) {
    assert.ok(limit === undefined || limit === 16, `${name}: a limit this test does not open (${limit})`)
    await assert.rejects((limit === undefined ? outbox : limited).enqueue(fullSpecOf(message)),
      (err) => err instanceof relaybox.ValidationError && err.code === code, name)
  }
  assert.equal(await outbox.pendingCount(), 0)
  assert.equal(await limited.pendingCount(), 0)
})

test('the envelopes survive the database transport', async (t) => {
  const { outbox } = await openOutbox(t)
  const dir = path.join(FIXTURES, 'envelopes')
  const expected = fs.readdirSync(dir).filter((f) => f.endsWith('.json'))
    .map((f) => JSON.parse(fs.readFileSync(path.join(dir, f), 'utf8')))
  assert.ok(expected.length >= 4)
  for (const fields of expected) await outbox.enqueue(specOf(fields))
  const got = new Map()
  const relay = new relaybox.Relay(outbox).start()
  t.after(() => relay.close())
  const topics = [...new Set(expected.map((f) => f.topic))]
  const consumers = topics.map((topic) => new relaybox.Consumer(outbox, topic, (message) => {
    got.set(message.id, JSON.parse(message.toCanonicalJSON()))
  }, { group: 'fixtures' }).start())
  t.after(() => Promise.all(consumers.map((c) => c.close())))
  await waitFor('every envelope consumed', () => got.size === expected.length)
  for (const fields of expected) {
    const { created_at: _c, available_at: _a, ...rest } = got.get(fields.id)
    const { created_at: _c2, available_at: _a2, ...want } = fields
    assert.deepEqual(rest, want)
  }
})

test('publishEvent writes the envelope of facade_envelope.json', async (t) => {
  const fixture = JSON.parse(read('facade_envelope.json'))
  const given = fixture.publish
  const { outbox } = await openOutbox(t)
  const messaging = relaybox.createMessaging({ broker: 'database', outbox, source: given.source })
  t.after(() => messaging.close())
  const event = await messaging.publishEvent(given.name, given.data,
    { topic: given.topic, key: given.key, metadata: given.metadata })
  // The event's own id and creation time are the fixture's only variables.
  const { timestamp } = event.toJSON()
  assert.match(event.id, /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/)
  assert.match(timestamp, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$/)
  const fill = (text) => text.replaceAll('<event id>', event.id).replaceAll('<timestamp>', timestamp)

  const got = []
  const relay = new relaybox.Relay(outbox).start()
  t.after(() => relay.close())
  const consumer = new relaybox.Consumer(outbox, given.topic, (message) => { got.push(message) },
    { group: 'facade-fixture' }).start()
  t.after(() => consumer.close())
  await waitFor('the event consumed', () => got.length === 1)
  await consumer.close()
  await relay.close()
  const [message] = got
  assert.equal(message.payload.toString('utf8'), fill(fixture.payload))
  assert.ok(message.payload.equals(Buffer.from(fill(fixture.payload), 'utf8')))
  const want = fixture.message
  assert.equal(message.topic, want.topic)
  assert.equal(message.key, want.key)
  assert.equal(message.type, want.type)
  assert.equal(message.contentType, want.content_type)
  assert.deepEqual(message.headers, Object.fromEntries(Object.entries(want.headers).map(([k, v]) => [k, fill(v)])))
})
