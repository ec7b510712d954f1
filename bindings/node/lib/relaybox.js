'use strict'
/**
 * relaybox for Node.js: reliable event delivery from your database to a
 * message broker. The transactional outbox, the relay and the idempotent
 * consumer run in relaybox's Rust core; this package is a thin layer over it.
 *
 * ```js
 * const { Outbox, Relay, Consumer } = require('relaybox')
 * const outbox = await Outbox.open(process.env.DATABASE_URL, { migrate: true })
 * await outbox.transaction(async (tx) => {
 *   await tx.execute('INSERT INTO orders (id) VALUES ($1)', [42])
 *   await tx.enqueue({ topic: 'orders', key: '42', type: 'OrderPlaced', payload: { id: 42 } })
 * })
 * ```
 * @module relaybox
 */

const { errorFor, fromNative, ...errors } = require('./errors')
const { native, sync } = require('./native')
const { Outbox, Transaction } = require('./outbox')
const { Relay } = require('./relay')
const { Consumer } = require('./consumer')
const { Message } = require('./message')
const { specJson } = require('./values')
const messaging = require('./messaging')
const { setLogger, consoleLogger, logStats } = require('./logging')

/**
 * Kafka transport settings in the form `Relay` and `Consumer` take.
 * @param {import('./relaybox').KafkaOptions} [options]
 * @returns {{kafka: object}}
 */
function kafka (options = {}) {
  return { kafka: { bootstrapServers: '127.0.0.1:9092', ...options } }
}

/**
 * RabbitMQ transport settings in the form `Relay` and `Consumer` take.
 * @param {import('./relaybox').RabbitMqOptions} [options]
 * @returns {{rabbitmq: object}}
 */
function rabbitmq (options = {}) {
  return { rabbitmq: { url: 'amqp://127.0.0.1:5672/%2f', ...options } }
}

/**
 * Redis Streams transport settings in the form `Relay` and `Consumer` take.
 * @param {import('./relaybox').RedisOptions} [options]
 * @returns {{redis: object}}
 */
function redis (options = {}) {
  return { redis: { url: 'redis://127.0.0.1:6379', ...options } }
}

/**
 * The message a spec describes, validated against the default limits, as
 * it would be stored (canonical JSON).
 * @param {import('./relaybox').MessageInput} message
 * @returns {Message}
 */
function buildMessage (message) {
  const json = specJson(message)
  return new Message(sync(() => native.canonicalJsonOf(json)))
}

/**
 * The outbox partition of a key among `partitions`, as every relaybox language computes it.
 * @param {string} key
 * @param {number} partitions
 * @returns {number}
 */
function partitionForKey (key, partitions) {
  return sync(() => native.partitionForKey(key, partitions))
}

module.exports = {
  Outbox,
  Transaction,
  Relay,
  Consumer,
  Message,
  kafka,
  rabbitmq,
  redis,
  buildMessage,
  partitionForKey,
  setLogger,
  consoleLogger,
  logStats,
  createMessaging: messaging.createMessaging,
  Messaging: messaging.Messaging,
  Event: messaging.Event,
  ...errors,
  version: native.nativeVersion()
}
