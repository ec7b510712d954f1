'use strict'
/**
 * The events façade: `createMessaging({broker})`, `publishEvent(name, data)`,
 * `onEvent(name, handler, {maxRetries, retryDelay, schema})`. The JavaScript
 * counterpart of Python's `relaybox.messaging`: events are JSON envelopes
 * written to the transactional outbox (in your transaction when you pass
 * one), relayed to the broker and handled by idempotent consumers. The
 * façade only builds envelopes, maps settings and dispatches; every delivery
 * guarantee comes from the core.
 * @module relaybox/messaging
 */

const { randomUUID } = require('node:crypto')
const { AsyncLocalStorage } = require('node:async_hooks')

const { Outbox, Transaction } = require('./outbox')
const { Relay } = require('./relay')
const { Consumer, describe } = require('./consumer')
const { ConfigError, ValidationError, Reject } = require('./errors')
const { stringify } = require('./values')

/** Header carrying the event name. */
const HEADER_EVENT_NAME = 'event_name'
/** Header carrying the event id. */
const HEADER_EVENT_ID = 'event_id'
/** Header carrying the event source. */
const HEADER_EVENT_SOURCE = 'event_source'

/** The transaction of the handler (or `messaging.transaction`) running now. */
const scope = new AsyncLocalStorage()

/**
 * ISO 8601 in UTC with microseconds and `Z`, as every relaybox language
 * writes envelope timestamps: `2026-02-01T12:00:00.000000Z`.
 * @param {Date} date
 * @returns {string}
 */
function formatTimestamp (date) {
  return date.toISOString().replace(/\.(\d{3})Z$/, '.$1000Z')
}

/** One event: what `publishEvent` sends and `onEvent` handlers receive. */
class Event {
  /**
   * @param {{name: string, data?: unknown, id?: string, timestamp?: Date, source?: string, metadata?: object, message?: import('./message').Message | null}} fields
   */
  constructor ({ name, data = {}, id = randomUUID(), timestamp = new Date(), source = '', metadata = {}, message = null }) {
    /** Event name, e.g. `"user.created"`. */
    this.name = name
    /** The payload: usually an object. */
    this.data = data
    /** Unique id of the event (UUID text); not the relaybox message id. */
    this.id = id
    /** Creation time. */
    this.timestamp = timestamp
    /** Name of the producing service. */
    this.source = source
    /** Free-form metadata (correlation ids and the like). */
    this.metadata = metadata
    /** On the consuming side: the relaybox message the event arrived in. */
    this.message = message
  }

  /** The envelope as a plain object (`timestamp` as ISO 8601 text). */
  toJSON () {
    return {
      id: this.id,
      name: this.name,
      data: this.data,
      timestamp: formatTimestamp(this.timestamp),
      source: this.source,
      metadata: this.metadata
    }
  }

  /** The headers sent with the envelope: `event_name`, `event_id`, `event_source`. */
  headers () {
    return { [HEADER_EVENT_NAME]: this.name, [HEADER_EVENT_ID]: this.id, [HEADER_EVENT_SOURCE]: this.source }
  }

  /**
   * The event a consumed message carries.
   * @param {import('./message').Message} message
   * @returns {Event}
   */
  static fromMessage (message) {
    const envelope = message.json()
    if (envelope === null || typeof envelope !== 'object' || Array.isArray(envelope)) {
      throw new TypeError('the payload is not an event envelope (a JSON object)')
    }
    const stamp = typeof envelope.timestamp === 'string' ? new Date(envelope.timestamp) : null
    return new Event({
      name: envelope.name ?? message.headers[HEADER_EVENT_NAME] ?? message.type,
      data: envelope.data ?? {},
      id: envelope.id ?? message.headers[HEADER_EVENT_ID] ?? message.id,
      timestamp: stamp !== null && !Number.isNaN(stamp.getTime()) ? stamp : message.createdAt,
      source: envelope.source ?? message.headers[HEADER_EVENT_SOURCE] ?? '',
      metadata: envelope.metadata ?? {},
      message
    })
  }
}

/** Broker name → relaybox transport, from the settings. */
const BROKERS = {
  database: () => 'database',
  kafka: (settings) => ({
    kafka: {
      bootstrapServers: settings.bootstrapServers,
      createTopics: settings.createTopics,
      properties: settings.kafkaProperties
    }
  }),
  rabbitmq: (settings) => ({
    rabbitmq: { url: settings.rabbitmqUrl, exchange: settings.exchange, codec: 'envelope' }
  }),
  redis: (settings) => ({ redis: { url: settings.redisUrl } })
}

function env (...names) {
  for (const name of names) {
    const value = process.env[name]
    if (value !== undefined && value.trim() !== '') return value.trim()
  }
  return undefined
}

/** The settings of `createMessaging`, each from the option, then the environment, then the default. */
function settingsFrom (options) {
  const bootstrapServers = options.bootstrapServers ?? env('KAFKA_BOOTSTRAP_SERVERS', 'RELAYBOX_KAFKA_BOOTSTRAP')
  const broker = options.broker ?? env('MESSAGE_BROKER') ??
    (bootstrapServers !== undefined ? 'kafka' : env('RABBITMQ_URL') ? 'rabbitmq' : env('REDIS_URL') ? 'redis' : 'database')
  if (!Object.hasOwn(BROKERS, broker)) {
    throw new ConfigError(`unknown broker ${JSON.stringify(broker)}; use ${Object.keys(BROKERS).join(', ')}`, { code: 'invalid_config' })
  }
  const source = options.source ?? env('MESSAGING_EVENT_SOURCE') ?? ''
  const settings = {
    broker,
    bootstrapServers: bootstrapServers ?? 'localhost:9092',
    rabbitmqUrl: options.rabbitmqUrl ?? env('RABBITMQ_URL', 'RELAYBOX_RABBITMQ_URL') ?? 'amqp://127.0.0.1:5672/%2f',
    exchange: options.exchange ?? env('RABBITMQ_EXCHANGE') ?? 'core_events',
    redisUrl: options.redisUrl ?? env('REDIS_URL', 'RELAYBOX_REDIS_URL') ?? 'redis://127.0.0.1:6379',
    databaseUrl: options.databaseUrl ?? env('RELAYBOX_DATABASE_URL', 'DATABASE_URL'),
    source,
    defaultTopic: options.defaultTopic ?? env('MESSAGING_DEFAULT_TOPIC') ?? 'events',
    tablePrefix: options.tablePrefix ?? env('RELAYBOX_TABLE_PREFIX'),
    group: options.group ?? (source || 'relaybox'),
    migrate: options.migrate ?? true,
    createTopics: options.createTopics ?? true,
    kafkaProperties: options.kafkaProperties ?? {},
    relay: options.relay ?? {}
  }
  settings.transport = BROKERS[broker](settings)
  return settings
}

function retrySettings (options) {
  const { maxRetries = 3, retryDelay = 1000, retryDelayMax } = options
  if (!Number.isInteger(maxRetries) || maxRetries < 0) {
    throw new ConfigError('maxRetries must be an integer, 0 or more', { code: 'invalid_config' })
  }
  if (typeof retryDelay !== 'number' || !(retryDelay > 0)) {
    throw new ConfigError('retryDelay must be a positive number of milliseconds', { code: 'invalid_config' })
  }
  const max = retryDelayMax ?? retryDelay
  if (typeof max !== 'number' || max < retryDelay) {
    throw new ConfigError('retryDelayMax must be at least retryDelay', { code: 'invalid_config' })
  }
  return { maxRetries, retryDelay, retryDelayMax: max }
}

function isPgClient (db) {
  return db !== null && typeof db === 'object' && typeof db.query === 'function' && !(db instanceof Transaction)
}

/**
 * A configured messaging façade. Create it with {@link createMessaging}.
 */
class Messaging {
  #settings
  #outbox
  #ownsOutbox
  #opening = null
  #registrations = []
  #relay = null
  #started = false

  /** @param {object} options see {@link createMessaging} */
  constructor (options = {}) {
    this.#settings = settingsFrom(options)
    this.#outbox = options.outbox ?? null
    this.#ownsOutbox = options.outbox === undefined
  }

  /** The settings in force (broker, source, defaultTopic, group, ...). */
  get settings () {
    const { transport, ...shown } = this.#settings
    return { ...shown, databaseUrl: undefined }
  }

  /**
   * The outbox, opened (and migrated) on first use.
   * @returns {Promise<Outbox>}
   */
  async getOutbox () {
    if (this.#outbox !== null) return this.#outbox
    if (this.#opening === null) {
      const { databaseUrl, tablePrefix, migrate } = this.#settings
      if (databaseUrl === undefined) {
        throw new ConfigError('no database for the outbox: pass databaseUrl or set RELAYBOX_DATABASE_URL', { code: 'invalid_config' })
      }
      this.#opening = Outbox.open(databaseUrl, { migrate, tablePrefix }).then(
        (outbox) => { this.#outbox = outbox; return outbox },
        (err) => { this.#opening = null; throw err }
      )
    }
    return this.#opening
  }

  /**
   * Writes an event to the outbox and returns it. It joins, in this order:
   * `options.tx` (a relaybox `Transaction` or a node-postgres client inside
   * `BEGIN`), the transaction of the running `onEvent` handler or
   * `messaging.transaction()` callback, or else a transaction of its own.
   * It is delivered only if that transaction commits.
   * @param {string} name event name
   * @param {unknown} [data] JSON-serialisable payload (default `{}`)
   * @param {{topic?: string, key?: string | number, metadata?: object, tx?: object}} [options]
   * @returns {Promise<Event>}
   */
  async publishEvent (name, data = {}, options = {}) {
    if (typeof name !== 'string' || name === '') {
      throw new ValidationError('an event needs a name', { code: 'invalid_message' })
    }
    const event = new Event({ name, data: data ?? {}, source: this.#settings.source, metadata: options.metadata ?? {} })
    const message = {
      topic: options.topic ?? this.#settings.defaultTopic,
      type: name,
      payloadText: stringify(event, 'invalid_message'),
      contentType: 'application/json',
      headers: event.headers()
    }
    if (options.key !== undefined && options.key !== null) message.key = String(options.key)
    const outbox = await this.getOutbox()
    const tx = options.tx ?? scope.getStore()
    if (tx instanceof Transaction) {
      await tx.enqueue(message)
    } else if (isPgClient(tx)) {
      await outbox.enqueueWith(tx, message)
    } else {
      await outbox.enqueue(message)
    }
    return event
  }

  /**
   * Runs `callback(tx)` in an outbox transaction; events published inside
   * it (without `tx`) join it.
   * @template T
   * @param {(tx: Transaction) => Promise<T>} callback
   * @returns {Promise<T>}
   */
  async transaction (callback) {
    const outbox = await this.getOutbox()
    return outbox.transaction((tx) => scope.run(tx, () => callback(tx)))
  }

  /**
   * Registers `handler(data, {event, tx, message})` for events named `name`.
   * It runs in an idempotent consumer of its own group (`options.group`,
   * default `<messaging group>.<name>`) on `options.topic` (default: the
   * default topic); `tx` is the consumer's transaction, and events it
   * publishes join it. A rejection retries `maxRetries` times, `retryDelay`
   * ms apart (doubling up to `retryDelayMax`), then dead-letters the message.
   * With `schema` (anything with `parse`, such as a zod schema) the data is
   * parsed first and the handler gets the result; data that fails goes to
   * dead letters at once.
   * @param {string} name
   * @param {(data: any, context: {event: Event, tx: Transaction, message: import('./message').Message}) => Promise<void> | void} handler
   * @param {{topic?: string, group?: string, maxRetries?: number, retryDelay?: number, retryDelayMax?: number, schema?: {parse: (value: unknown) => unknown}}} [options]
   * @returns {{name: string, topic: string, group: string, consumer: Consumer | null}}
   */
  onEvent (name, handler, options = {}) {
    if (typeof name !== 'string' || name === '') throw new ConfigError('onEvent needs an event name', { code: 'invalid_config' })
    if (typeof handler !== 'function') throw new TypeError('onEvent needs a handler function')
    const { schema } = options
    if (schema !== undefined && (schema === null || typeof schema.parse !== 'function')) {
      throw new ConfigError('schema must have a parse(value) method (a zod schema, say)', { code: 'invalid_config' })
    }
    const retries = retrySettings(options)
    const registration = {
      name,
      topic: options.topic ?? this.#settings.defaultTopic,
      group: options.group ?? `${this.#settings.group}.${name}`,
      retries,
      handle: async (message, tx) => {
        if ((message.headers[HEADER_EVENT_NAME] ?? message.type) !== name) return
        let event
        try {
          event = Event.fromMessage(message)
        } catch (err) {
          throw new Reject(`message ${message.id} is not an event envelope: ${describe(err)}`)
        }
        let data = event.data
        if (schema !== undefined) {
          try {
            data = await schema.parse(data)
          } catch (err) {
            throw new Reject(`message ${message.id} does not match the schema of ${name}: ${describe(err).replace(/\s+/g, ' ')}`)
          }
        }
        await scope.run(tx, () => handler(data, { event, tx, message }))
      },
      consumer: null
    }
    this.#registrations.push(registration)
    if (this.#started) this.#startConsumer(registration)
    return registration
  }

  #startConsumer (registration) {
    registration.consumer = new Consumer(this.#outbox, registration.topic, registration.handle, {
      group: registration.group,
      transport: this.#settings.transport,
      ...registration.retries
    }).start()
  }

  /**
   * Opens the outbox and starts a consumer per `onEvent` registration, and a
   * relay unless `{relay: false}` (another process relays).
   * @param {{relay?: boolean}} [options]
   * @returns {Promise<this>}
   */
  async start (options = {}) {
    if (this.#started) return this
    const outbox = await this.getOutbox()
    if (options.relay ?? true) {
      this.#relay = new Relay(outbox, { transport: this.#settings.transport, ...this.#settings.relay }).start()
    }
    this.#started = true
    try {
      for (const registration of this.#registrations) this.#startConsumer(registration)
    } catch (err) {
      await this.stop()
      throw err
    }
    return this
  }

  /**
   * Counters of the relay and of each handler's consumer.
   * @returns {{relay: object | null, handlers: Record<string, object>}}
   */
  stats () {
    const handlers = {}
    for (const r of this.#registrations) if (r.consumer !== null) handlers[r.group] = r.consumer.stats()
    return { relay: this.#relay === null ? null : this.#relay.stats(), handlers }
  }

  /** Stops the consumers (finishing messages in flight) and the relay. */
  async stop () {
    const consumers = this.#registrations.filter((r) => r.consumer !== null)
    await Promise.all(consumers.map(async (r) => { await r.consumer.close(); r.consumer = null }))
    if (this.#relay !== null) await this.#relay.close()
    this.#relay = null
    this.#started = false
  }

  /** {@link Messaging#stop}, then closes the outbox if the façade opened it. */
  async close () {
    await this.stop()
    if (this.#ownsOutbox && this.#outbox !== null) await this.#outbox.close()
    this.#outbox = this.#ownsOutbox ? null : this.#outbox
    this.#opening = null
  }
}

/**
 * A messaging façade. Each option left out comes from the environment, then
 * the default: `broker` (`MESSAGE_BROKER`; else `kafka` when
 * `bootstrapServers`/`KAFKA_BOOTSTRAP_SERVERS` is set, else `rabbitmq` when
 * `RABBITMQ_URL` is, else `redis` when `REDIS_URL` is, else `database`),
 * `databaseUrl` (`RELAYBOX_DATABASE_URL`, `DATABASE_URL`), `bootstrapServers`
 * (`KAFKA_BOOTSTRAP_SERVERS`, `RELAYBOX_KAFKA_BOOTSTRAP`, `localhost:9092`),
 * `rabbitmqUrl` (`RABBITMQ_URL`, `RELAYBOX_RABBITMQ_URL`,
 * `amqp://127.0.0.1:5672/%2f`), `exchange` (the RabbitMQ topic exchange,
 * `RABBITMQ_EXCHANGE`, `core_events`), `redisUrl` (`REDIS_URL`,
 * `RELAYBOX_REDIS_URL`, `redis://127.0.0.1:6379`),
 * `source` (`MESSAGING_EVENT_SOURCE`, `""`), `defaultTopic`
 * (`MESSAGING_DEFAULT_TOPIC`, `events`), `tablePrefix`
 * (`RELAYBOX_TABLE_PREFIX`), `group` (consumer group prefix, default the
 * source or `relaybox`), `migrate` (true), `createTopics` (true),
 * `kafkaProperties`, `relay` (relay settings), `outbox` (an open outbox to
 * reuse; the façade does not close it). Nothing connects here.
 * @param {object} [options]
 * @returns {Messaging}
 */
function createMessaging (options = {}) {
  return new Messaging(options)
}

module.exports = {
  createMessaging,
  Messaging,
  Event,
  BROKERS,
  formatTimestamp,
  HEADER_EVENT_NAME,
  HEADER_EVENT_ID,
  HEADER_EVENT_SOURCE
}
