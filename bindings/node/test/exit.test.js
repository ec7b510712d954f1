'use strict'
const { test } = require('node:test')
const assert = require('node:assert/strict')
const { spawn } = require('node:child_process')
const path = require('node:path')

const { pgUrl, openOutbox } = require('./helpers')

/**
 * Runs a script in a child Node process with the outbox's prefix; resolves
 * with its exit code and output, or with `code: null` if it is still running
 * after `limit` ms (then it is killed).
 */
function run (script, prefix, limit) {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, ['-e', script], {
      env: { ...process.env, PREFIX: prefix, PACKAGE: path.join(__dirname, '..') },
      stdio: ['ignore', 'pipe', 'pipe']
    })
    let output = ''
    child.stdout.on('data', (d) => { output += d })
    child.stderr.on('data', (d) => { output += d })
    const timer = setTimeout(() => child.kill('SIGKILL'), limit)
    child.on('exit', (code, signal) => {
      clearTimeout(timer)
      resolve({ code: signal === 'SIGKILL' ? null : code, output })
    })
  })
}

const SCRIPT = `
const { Outbox, Relay, Consumer } = require(process.env.PACKAGE)
;(async () => {
  const outbox = await Outbox.open(process.env.RELAYBOX_TEST_DATABASE_URL, { tablePrefix: process.env.PREFIX })
  const relay = new Relay(outbox).start()
  let consumed
  const done = new Promise((resolve) => { consumed = resolve })
  const consumer = new Consumer(outbox, 'exit-test', async (message) => consumed(message.json()), { group: 'exit' }).start()
  await outbox.enqueue({ topic: 'exit-test', payload: { hello: 'world' } })
  console.log('consumed', JSON.stringify(await done))
  if (process.env.LEAVE_OPEN) return
  await consumer.close()
  await relay.close()
  await outbox.close()
  console.log('closed')
})()
`

test('a script that opens, relays, consumes and closes exits by itself', async (t) => {
  const { prefix } = await openOutbox(t)
  assert.ok(pgUrl())
  const { code, output } = await run(SCRIPT, prefix, 20000)
  assert.equal(code, 0, `the child did not exit by itself within 20 s:\n${output}`)
  assert.match(output, /consumed {"hello":"world"}/)
  assert.match(output, /closed/)
})

test('while a consumer and a relay run, they keep the process alive', async (t) => {
  const { prefix } = await openOutbox(t)
  process.env.LEAVE_OPEN = '1'
  try {
    const { code, output } = await run(SCRIPT, prefix, 3000)
    assert.equal(code, null, `the child exited (${code}) although nothing was closed:\n${output}`)
    assert.match(output, /consumed/)
  } finally {
    delete process.env.LEAVE_OPEN
  }
})
