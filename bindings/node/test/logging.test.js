'use strict'
const { test } = require('node:test')
const assert = require('node:assert/strict')
const { spawn } = require('node:child_process')
const path = require('node:path')

const { relaybox, openOutbox, waitFor, unique } = require('./helpers')
const { native } = require('../lib/native')

/** Collects the records given to `setLogger` until the test ends. */
function collect (t, level = 'info') {
  const records = []
  relaybox.setLogger((record) => records.push(record), { level })
  t.after(() => relaybox.setLogger(relaybox.consoleLogger, { level: 'warn' }))
  return records
}

function find (records, what, predicate) {
  return waitFor(what, () => records.find(predicate))
}

test('a dead-lettered message\'s warning reaches the logger with its fields', async (t) => {
  const records = collect(t)
  const { outbox } = await openOutbox(t)
  const topic = unique('log-dead')
  const group = `g-${topic}`
  const [id] = await outbox.transaction((tx) => tx.enqueueBatch([{ topic, key: 'k', type: 'T', payload: { n: 1 } }]))
  const relay = new relaybox.Relay(outbox).start()
  t.after(() => relay.close())
  const consumer = new relaybox.Consumer(outbox, topic, async () => {
    throw new Error('no stock for it')
  }, { group, maxRetries: 0 }).start()
  t.after(() => consumer.close())

  const record = await find(records, 'the dead-letter warning', (r) => r.message === 'relaybox message dead-lettered by consumer')
  assert.equal(record.level, 'warn')
  assert.equal(record.target, 'relaybox::consumer')
  assert.equal(record.fields.id, id)
  assert.equal(record.fields.group, group)
  assert.equal(record.fields.attempts, 1)
  assert.match(record.fields.error, /no stock for it/)
  assert.equal(record.text, `relaybox message dead-lettered by consumer id=${id} group=${group} attempts=1 error=${record.fields.error}`)
  assert.match(record.file, /core\/src\/consumer\/\w+\.rs$/)
  assert.ok(record.time instanceof Date && Math.abs(record.time - Date.now()) < 60000)
  // Info records arrive too at level 'info': the relay's start.
  assert.ok(records.some((r) => r.level === 'info' && r.message === 'relaybox relay started'))
  await waitFor('the dead letter', async () => (await outbox.deadLetters()).length === 1)
})

test('levels filter, every value type arrives, and null turns forwarding off', async (t) => {
  const records = collect(t, 'warn')
  native.logForTests('info', 'not at warn', 1)
  native.logForTests('warn', 'at warn', 1)
  const record = await find(records, '\'at warn\'', (r) => r.message === 'at warn')
  assert.deepEqual(record.fields, { n: 0, flag: true, ratio: 0.5, text: 'two words' })
  assert.equal(record.text, 'at warn n=0 flag=true ratio=0.5 text=two words')
  assert.equal(records.filter((r) => r.message === 'not at warn').length, 0)

  relaybox.setLogger(null)
  native.logForTests('error', 'while off', 1)
  relaybox.setLogger((r) => records.push(r), { level: 'warn' })
  native.logForTests('error', 'back on', 1)
  await find(records, '\'back on\'', (r) => r.message === 'back on')
  assert.equal(records.filter((r) => r.message === 'while off').length, 0)

  assert.throws(() => relaybox.setLogger(() => {}, { level: 'loud' }), /unknown log level "loud"/)
  assert.throws(() => relaybox.setLogger('console'), /a function or null/)
})

test('a logger that cannot keep up loses records, counted and reported, and a throwing logger does not crash', async (t) => {
  const records = []
  let calls = 0
  relaybox.setLogger((record) => {
    calls += 1
    if (calls === 1) throw new Error('logger bug')
    records.push(record)
  }, { level: 'debug' })
  t.after(() => relaybox.setLogger(relaybox.consoleLogger, { level: 'warn' }))
  const warned = new Promise((resolve) => process.once('warning', resolve))
  const before = relaybox.logStats().dropped
  native.logForTests('debug', 'flood', 200000)
  const report = await find(records, 'the drop report', (r) => r.message.startsWith('relaybox log records dropped'))
  assert.equal(report.level, 'warn')
  assert.ok(report.fields.dropped > 0)
  assert.ok(relaybox.logStats().dropped > before)
  assert.match(String((await warned).message), /relaybox logger threw: Error: logger bug/)
})

test('by default warnings go to the console, and the process still exits by itself', async () => {
  const script = `
    const { setLogger } = require(process.env.PACKAGE)
    const { native } = require(process.env.PACKAGE + '/lib/native')
    native.logForTests('info', 'quiet info', 1)
    native.logForTests('warn', 'loud warning', 1)
    native.logForTests('error', 'loud error', 1)
    setTimeout(() => {}, 500)
  `
  const { code, stdout, stderr } = await new Promise((resolve) => {
    const child = spawn(process.execPath, ['-e', script], {
      env: { ...process.env, PACKAGE: path.join(__dirname, '..') },
      stdio: ['ignore', 'pipe', 'pipe']
    })
    let stdout = ''
    let stderr = ''
    child.stdout.on('data', (d) => { stdout += d })
    child.stderr.on('data', (d) => { stderr += d })
    const timer = setTimeout(() => child.kill('SIGKILL'), 20000)
    child.on('exit', (code) => { clearTimeout(timer); resolve({ code, stdout, stderr }) })
  })
  assert.equal(code, 0, stderr)
  assert.match(stderr, /relaybox WARN relaybox::testing: loud warning n=0 flag=true ratio=0\.5 text=two words/)
  assert.match(stderr, /relaybox ERROR relaybox::testing: loud error n=0/)
  assert.doesNotMatch(stderr + stdout, /quiet info/)
})
