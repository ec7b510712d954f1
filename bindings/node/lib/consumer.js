'use strict'
/**
 * The idempotent consumer: each message is handled once in effect.
 * @module relaybox/consumer
 */

const { native, settle, sync } = require('./native')
const { coreOptions, stringify, transportJson, untag } = require('./values')
const { Reject } = require('./errors')
const { Message } = require('./message')
const { Transaction } = require('./outbox')
const { ConfigError } = require('./errors')
const { inProcessSpan, messagingSystem } = require('./tracing')

/**
 * One line describing a handler failure, for retries and the dead-letter record.
 * @param {unknown} err
 * @returns {string}
 */
function describe (err) {
  if (err instanceof Error) {
    const name = err.name || err.constructor?.name || 'Error'
    return err.message ? `${name}: ${err.message}` : name
  }
  try {
    return `non-Error rejection: ${typeof err === 'string' ? err : JSON.stringify(err)}`
  } catch {
    return `non-Error rejection: ${String(err)}`
  }
}

/**
 * The function the addon calls for each message: runs the handler and
 * resolves with `null` or a JSON failure, never rejecting.
 * @param {Function} handler
 * @param {string} group the consumer group (for its `process` span)
 * @param {string} system the transport's `messaging.system`
 * @returns {(messageJson: string, tx: object) => Promise<string | null>}
 */
function bridge (handler, group, system) {
  return async (messageJson, nativeTx) => {
    try {
      const message = new Message(messageJson)
      await inProcessSpan(message, group, system, async () => handler(message, new Transaction(nativeTx)))
      return null
    } catch (err) {
      if (err instanceof Reject) return JSON.stringify({ error: err.message || 'rejected', reject: true })
      return JSON.stringify({ error: describe(err), reject: false })
    }
  }
}

/** Thrown inside the host transaction when the inbox already had the message. */
const DUPLICATE = new Error('duplicate delivery')

/**
 * The function the addon calls for each delivery in host mode: in one
 * transaction of the application's library, runs the inbox statement (a
 * row returned: the message is new) and then the handler, and resolves with
 * `"processed"` once the library committed, `"duplicate"` when the inbox had
 * the message (rolled back, nothing written), or a JSON failure (rolled back).
 * @param {Function} handler `(message, tx) => ...`
 * @param {object} host the integration's `transaction` and `exec`
 * @param {string} group the consumer group (for its `process` span)
 * @param {string} system the transport's `messaging.system`
 * @returns {(messageJson: string, sql: string, paramsJson: string) => Promise<string>}
 */
function hostBridge (handler, host, group, system) {
  return async (messageJson, sql, paramsJson) => {
    try {
      const params = JSON.parse(paramsJson).map(untag)
      await host.transaction(async (tx) => {
        const inserted = await host.exec(tx, `${sql} RETURNING 1 AS inserted`, params)
        if (inserted.length === 0) throw DUPLICATE
        const message = new Message(messageJson)
        await inProcessSpan(message, group, system, async () => handler(message, tx))
      })
      return 'processed'
    } catch (err) {
      if (err === DUPLICATE) return 'duplicate'
      if (err instanceof Reject) return JSON.stringify({ error: err.message || 'rejected', reject: true })
      return JSON.stringify({ error: describe(err), reject: false })
    }
  }
}

/**
 * Reads `topic` as consumer group `group` and calls
 * `await handler(message, tx)` for each message; the message is
 * acknowledged only after the returned promise resolves. `tx` holds the
 * inbox row marking the message processed: write through it and your writes
 * commit atomically with that mark. A duplicate delivery is skipped. A
 * rejection retries the message (`maxRetries` times, from `retryDelay` ms
 * doubling up to `retryDelayMax`), then dead-letters it; rejecting with
 * {@link Reject} dead-letters it at once. Messages of one key are handled in
 * order; up to `concurrency` lanes run at once.
 */
class Consumer {
  #outbox
  #topic
  #handler
  #host
  #transport
  #config
  #native = null

  /**
   * @param {import('./outbox').Outbox} outbox
   * @param {string} topic
   * @param {(message: Message, tx: Transaction) => Promise<void> | void} handler
   * @param {import('./relaybox').ConsumerOptions} options at least `group`
   * @param {object} [host] internal: the database-library integration whose
   *   transaction the handler runs in (see `relaybox/lib/knex` and the others)
   */
  constructor (outbox, topic, handler, options, host) {
    if (typeof handler !== 'function') throw new TypeError('handler must be a function')
    const { transport, ...settings } = options ?? {}
    if (typeof topic !== 'string') {
      throw new ConfigError('topic must be a string', { code: 'invalid_config' })
    }
    this.#outbox = outbox
    this.#topic = topic
    this.#host = host ?? null
    this.#transport = transportJson(transport)
    // Each handler call runs in a `process` span (with OpenTelemetry).
    const system = messagingSystem(this.#transport)
    this.#handler = host
      ? hostBridge(handler, host, settings.group, system)
      : bridge(handler, settings.group, system)
    this.#config = stringify(coreOptions(settings, 'Consumer options'), 'invalid_config')
    /** The consumer group. */
    this.group = settings.group
    /** The topic consumed. */
    this.topic = topic
  }

  /**
   * Starts consuming (settings are validated here).
   * @returns {this}
   */
  start () {
    if (this.#native !== null && this.#native.running) return this
    const store = this.#outbox._native
    this.#native = sync(() => this.#host
      ? native.NativeConsumer.startHost(store, this.#transport, this.#topic, this.#config, this.#host.placeholders, this.#handler)
      : native.NativeConsumer.start(store, this.#transport, this.#topic, this.#config, this.#handler)
    )
    return this
  }

  /** Whether it is running. */
  get running () {
    return this.#native !== null && this.#native.running
  }

  /**
   * Counters: processed, duplicates, retried, deadLettered.
   * @returns {import('./relaybox').ConsumerStats}
   */
  stats () {
    if (this.#native === null) return { processed: 0, duplicates: 0, retried: 0, deadLettered: 0 }
    return this.#native.stats()
  }

  /**
   * Finishes and acknowledges the messages in flight, then stops; nothing of
   * this consumer keeps the process alive afterwards.
   */
  async close () {
    if (this.#native === null) return
    const consumer = this.#native
    await settle(() => consumer.shutdown())
  }
}

module.exports = { Consumer, describe }
