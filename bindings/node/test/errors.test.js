'use strict'
const { test } = require('node:test')
const assert = require('node:assert/strict')
const fs = require('node:fs')
const path = require('node:path')

const relaybox = require('..')
const { errorFor, fromNative } = require('../lib/errors')

const EXPECTED = {
  invalid_topic: 'ValidationError',
  payload_too_large: 'ValidationError',
  invalid_header: 'ValidationError',
  invalid_message: 'ValidationError',
  invalid_value: 'ValidationError',
  invalid_config: 'ConfigError',
  closed: 'ClosedError',
  schema: 'SchemaError',
  database: 'StoreError',
  transport: 'TransportError',
  handler: 'HandlerError',
  timeout: 'TimeoutError',
  not_found: 'NotFoundError',
  internal: 'InternalError'
}

test('every code of the core maps to its RelayboxError subclass', () => {
  const source = fs.readFileSync(path.join(__dirname, '../../../core/src/error.rs'), 'utf8')
  const body = source.slice(source.indexOf('pub fn code(&self)'), source.indexOf('pub fn retryable(&self)'))
  const coreCodes = [...body.matchAll(/=> "([a-z_]+)"/g)].map((m) => m[1]).sort()
  assert.ok(coreCodes.length >= 14, `codes found in core/src/error.rs: ${coreCodes}`)
  assert.deepEqual([...relaybox.CODES].sort(), coreCodes)
  assert.deepEqual(Object.keys(EXPECTED).sort(), coreCodes)
  for (const code of coreCodes) {
    const err = errorFor(code, 'm', { retryable: true, messageId: 'id-1' })
    assert.equal(err.constructor.name, EXPECTED[code])
    assert.ok(err instanceof relaybox[EXPECTED[code]])
    assert.ok(err instanceof relaybox.RelayboxError)
    assert.ok(err instanceof Error)
    assert.equal(err.code, code)
    assert.equal(err.name, EXPECTED[code])
    assert.equal(err.retryable, true)
    assert.equal(err.messageId, 'id-1')
  }
})

test('native errors carry code, retryable and messageId; other errors pass through', () => {
  const native = new Error('relaybox-error:{"code":"transport","retryable":true,"messageId":"0190","message":"transport kafka failed"}')
  const err = fromNative(native)
  assert.ok(err instanceof relaybox.TransportError)
  assert.deepEqual([err.code, err.retryable, err.messageId, err.message], ['transport', true, '0190', 'transport kafka failed'])
  const plain = new TypeError('x')
  assert.equal(fromNative(plain), plain)
  assert.ok(!(new relaybox.Reject('no') instanceof relaybox.RelayboxError))
})

test('buildMessage applies the spec and validates it', () => {
  const message = relaybox.buildMessage({ topic: 't', key: 'k', payload: { a: 1 }, delay: 2000 })
  assert.equal(message.availableAt - message.createdAt, 2000)
  assert.deepEqual(message.json(), { a: 1 })
  assert.equal(message.key, 'k')
  assert.throws(() => relaybox.buildMessage({ topic: 't', payload: 1, payload_text: 'x' }),
    (err) => err instanceof relaybox.ValidationError && err.code === 'invalid_message')
})
