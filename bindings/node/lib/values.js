'use strict'
/**
 * Conversions between JavaScript values and what the native addon takes:
 * message objects to `MessageSpec` JSON, SQL parameters to tagged pairs and
 * tagged result values back, option objects (camelCase) to the core's
 * snake_case JSON.
 * @module relaybox/values
 */

const { ValidationError, ConfigError } = require('./errors')
const { stamp } = require('./tracing')

/** Message fields in JavaScript spelling → `MessageSpec` field. */
const SPEC_FIELDS = {
  topic: 'topic',
  key: 'key',
  type: 'type',
  payload: 'payload',
  payloadBase64: 'payload_base64',
  payload_base64: 'payload_base64',
  payloadText: 'payload_text',
  payload_text: 'payload_text',
  headers: 'headers',
  contentType: 'content_type',
  content_type: 'content_type',
  delay: 'delay',
  availableAt: 'available_at',
  available_at: 'available_at',
  createdAt: 'created_at',
  created_at: 'created_at',
  idempotencyKey: 'idempotency_key',
  idempotency_key: 'idempotency_key',
  id: 'id'
}

function isBytes (value) {
  return value instanceof Uint8Array || value instanceof ArrayBuffer
}

function toBuffer (value) {
  return value instanceof ArrayBuffer ? Buffer.from(value) : Buffer.from(value.buffer, value.byteOffset, value.byteLength)
}

/**
 * The `MessageSpec` (plain JSON object) of a message given in JavaScript
 * form: a `Buffer`/`Uint8Array` payload becomes `payload_base64`, a `Date`
 * `availableAt` or `createdAt` RFC 3339 text; unknown fields are passed on so that the core
 * rejects them. With OpenTelemetry the headers carry the trace context of
 * the message's `create` span (see `./tracing`).
 * @param {object} message
 * @returns {object}
 */
function toSpec (message) {
  if (message === null || typeof message !== 'object' || Array.isArray(message)) {
    throw new ValidationError('a message must be an object such as {topic, payload}', { code: 'invalid_message' })
  }
  const spec = {}
  for (const [name, value] of Object.entries(message)) {
    if (value === undefined) continue
    const field = SPEC_FIELDS[name] ?? name
    if (field === 'payload' && isBytes(value)) {
      spec.payload_base64 = toBuffer(value).toString('base64')
    } else if ((field === 'available_at' || field === 'created_at') && value instanceof Date) {
      if (Number.isNaN(value.getTime())) {
        throw new ValidationError(`${name} is an invalid Date`, { code: 'invalid_message' })
      }
      spec[field] = value.toISOString()
    } else {
      spec[field] = value
    }
  }
  // The trace context of the message's `create` span, with OpenTelemetry.
  const headers = stamp(spec.topic, spec.headers)
  if (headers !== undefined) spec.headers = headers
  return spec
}

/**
 * `MessageSpec` JSON text of a message.
 * @param {object} message
 * @returns {string}
 */
function specJson (message) {
  return stringify(toSpec(message), 'invalid_message')
}

function stringify (value, code) {
  try {
    return JSON.stringify(value, (_key, v) => {
      if (typeof v === 'bigint') return v.toString()
      if (typeof v === 'number' && !Number.isFinite(v)) throw new TypeError(`${v} is not valid in JSON`)
      return v
    })
  } catch (err) {
    throw new ValidationError(`not JSON-serialisable: ${err.message}`, { code })
  }
}

/**
 * One SQL parameter as a tagged pair.
 * @param {unknown} value
 * @returns {Array<unknown>}
 */
function tag (value) {
  if (value === null || value === undefined) return ['n']
  switch (typeof value) {
    case 'boolean': return ['b', value]
    case 'bigint': return ['i', value.toString()]
    case 'string': return ['s', value]
    case 'number':
      if (Number.isSafeInteger(value)) return ['i', value]
      if (!Number.isFinite(value)) {
        throw new ValidationError(`SQL parameter ${value} is not a finite number`, { code: 'invalid_value' })
      }
      return ['f', value]
    case 'object':
      if (isBytes(value)) return ['x', toBuffer(value).toString('base64')]
      if (value instanceof Date) {
        if (Number.isNaN(value.getTime())) {
          throw new ValidationError('SQL parameter is an invalid Date', { code: 'invalid_value' })
        }
        return ['t', value.toISOString()]
      }
      return ['j', JSON.parse(stringify(value, 'invalid_value'))]
    default:
      throw new ValidationError(`unsupported SQL parameter type ${typeof value}`, { code: 'invalid_value' })
  }
}

/**
 * Tagged-pair JSON of SQL parameters (an array, or nothing).
 * @param {unknown[] | undefined} params
 * @returns {string}
 */
function paramsJson (params) {
  if (params === undefined || params === null) return '[]'
  if (!Array.isArray(params)) {
    throw new ValidationError('params must be an array of positional parameters', { code: 'invalid_value' })
  }
  return JSON.stringify(params.map(tag))
}

/**
 * A tagged value as JavaScript: integers beyond 2^53 as `BigInt`, bytes as
 * `Buffer`, timestamps as `Date`, UUIDs as text, JSON as parsed values.
 * @param {Array<unknown>} pair
 * @returns {unknown}
 */
function untag ([kind, value]) {
  switch (kind) {
    case 'n': return null
    case 'i': return typeof value === 'string' ? BigInt(value) : value
    case 'x': return Buffer.from(value, 'base64')
    case 't': return new Date(value)
    default: return value
  }
}

/**
 * Rows from the native JSON text (rows of `[column, tagged value]` pairs).
 * @param {string} text
 * @returns {Array<Record<string, unknown>>}
 */
function rows (text) {
  return JSON.parse(text).map((row) => {
    const out = {}
    for (const [column, pair] of row) out[column] = untag(pair)
    return out
  })
}

function snake (name) {
  return name.replace(/[A-Z]/g, (c) => `_${c.toLowerCase()}`)
}

/**
 * An options object in the core's JSON form: camelCase keys become
 * snake_case, `undefined` values are dropped; unknown keys are passed on so
 * that the core rejects them (`ConfigError`).
 * @param {object | undefined} options
 * @param {string} what
 * @returns {object}
 */
function coreOptions (options, what) {
  if (options === undefined || options === null) return {}
  if (typeof options !== 'object' || Array.isArray(options)) {
    throw new ConfigError(`${what} must be an object`, { code: 'invalid_config' })
  }
  const out = {}
  for (const [name, value] of Object.entries(options)) {
    if (value !== undefined) out[snake(name)] = value
  }
  return out
}

/**
 * A transport in the core's JSON form: `"database"` (or nothing), or an
 * object with one key naming the transport and its settings in camelCase,
 * e.g. `{kafka: {bootstrapServers, createTopics, properties}}`,
 * `{rabbitmq: {url, exchange}}` or `{redis: {url}}`; the settings' keys
 * become snake_case (nested values such as Kafka `properties` are passed on
 * as they are). `{routes: [{topics, transport, destination}]}` gives each
 * route's transport in the same form.
 * @param {unknown} transport
 * @returns {string}
 */
function transportJson (transport) {
  if (transport === undefined || transport === null || transport === 'database') return '"database"'
  if (transport && typeof transport === 'object' && 'routes' in transport && Object.keys(transport).length === 1) {
    if (!Array.isArray(transport.routes)) {
      throw new ConfigError('routes must be an array of {topics, transport, destination}', { code: 'invalid_config' })
    }
    const routes = transport.routes.map((route) => {
      if (!route || typeof route !== 'object') {
        throw new ConfigError('each route must be an object {topics, transport, destination}', { code: 'invalid_config' })
      }
      const { transport: target, ...rest } = route
      return { ...rest, transport: JSON.parse(transportJson(target)) }
    })
    return stringify({ routes }, 'invalid_config')
  }
  if (typeof transport === 'object' && !Array.isArray(transport)) {
    const entries = Object.entries(transport)
    if (entries.length === 1) {
      const [name, settings] = entries[0]
      return stringify({ [name]: coreOptions(settings, `${name} settings`) }, 'invalid_config')
    }
  }
  return stringify(transport, 'invalid_config')
}

module.exports = { toSpec, specJson, paramsJson, untag, rows, coreOptions, transportJson, stringify }
