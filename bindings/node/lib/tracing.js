'use strict'
/**
 * OpenTelemetry spans of the Node API, when `@opentelemetry/api` is
 * installed: at enqueue each message records a `create` span (a child of the
 * active span) and carries its context in its headers through the globally
 * registered propagator (W3C `traceparent`/`tracestate` with the SDK's
 * defaults); a consumer runs each handler call inside a `process` span whose
 * parent is that context, made active so that the handler's own spans join
 * the producer's trace. Without the package nothing here runs.
 * @module relaybox/tracing
 */

let api = null
try {
  api = require('@opentelemetry/api')
} catch {
  api = null
}

const SCOPE = 'relaybox'
const SYSTEMS = { database: 'relaybox.database', sqs: 'aws_sqs', sns: 'aws.sns' }

/**
 * The `messaging.system` of a transport in the core's JSON form.
 * @param {string} transportJson
 * @returns {string}
 */
function messagingSystem (transportJson) {
  const settings = JSON.parse(transportJson)
  const name = typeof settings === 'string' ? settings : (Object.keys(settings ?? {})[0] ?? 'relaybox')
  return SYSTEMS[name] ?? name
}

/**
 * `headers` with the trace context of a new `create` span for a message of
 * `topic`; unchanged when they already carry a `traceparent`, or without
 * OpenTelemetry.
 * @param {string} topic
 * @param {Record<string, string> | undefined} headers
 * @returns {Record<string, string> | undefined}
 */
function stamp (topic, headers) {
  if (api === null || typeof topic !== 'string') return headers
  if (headers !== null && typeof headers === 'object' && 'traceparent' in headers) return headers
  const span = api.trace.getTracer(SCOPE).startSpan(`create ${topic}`, {
    kind: api.SpanKind.PRODUCER,
    attributes: {
      'messaging.system': 'relaybox',
      'messaging.destination.name': topic,
      'messaging.operation.name': 'create',
      'messaging.operation.type': 'create'
    }
  })
  const carrier = { ...(headers ?? {}) }
  api.propagation.inject(api.trace.setSpan(api.context.active(), span), carrier)
  span.end()
  return Object.keys(carrier).length === 0 ? headers : carrier
}

/**
 * Runs `fn` inside a `process` span of `message` (consumer `group`, transport
 * `system`), recording its error when it throws; `fn()` alone without
 * OpenTelemetry.
 * @template T
 * @param {import('./message').Message} message
 * @param {string} group
 * @param {string} system
 * @param {() => Promise<T>} fn
 * @returns {Promise<T>}
 */
async function inProcessSpan (message, group, system, fn) {
  if (api === null) return fn()
  const parent = api.propagation.extract(api.ROOT_CONTEXT, message.headers)
  const span = api.trace.getTracer(SCOPE).startSpan(`process ${message.topic}`, {
    kind: api.SpanKind.CONSUMER,
    attributes: {
      'messaging.system': system,
      'messaging.destination.name': message.topic,
      'messaging.message.id': message.id,
      'messaging.operation.name': 'process',
      'messaging.operation.type': 'process',
      'messaging.consumer.group.name': group
    }
  }, parent)
  try {
    return await api.context.with(api.trace.setSpan(parent, span), fn)
  } catch (err) {
    span.recordException(err instanceof Error ? err : String(err))
    span.setStatus({ code: api.SpanStatusCode.ERROR, message: err instanceof Error ? err.message : String(err) })
    throw err
  } finally {
    span.end()
  }
}

module.exports = { inProcessSpan, messagingSystem, stamp }
