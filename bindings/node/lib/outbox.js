'use strict'
/**
 * The transactional outbox: {@link Outbox} and its {@link Transaction}s.
 * @module relaybox/outbox
 */

const { native, settle, sync } = require('./native')
const { specJson, paramsJson, rows, untag, stringify, coreOptions } = require('./values')
const { ValidationError, ConfigError } = require('./errors')

/**
 * A database transaction for your business writes and your events: both
 * commit or neither does.
 */
class Transaction {
  #native

  /** @param {object} nativeTransaction the addon's transaction */
  constructor (nativeTransaction) {
    this.#native = nativeTransaction
  }

  /**
   * Runs a statement (`$1`-style placeholders on PostgreSQL, `?` on SQLite).
   * @param {string} sql
   * @param {unknown[]} [params]
   * @returns {Promise<number>} rows affected
   */
  async execute (sql, params) {
    const json = paramsJson(params)
    return settle(() => this.#native.execute(String(sql), json))
  }

  /**
   * Runs a query.
   * @param {string} sql
   * @param {unknown[]} [params]
   * @returns {Promise<Array<Record<string, unknown>>>} rows, column name to value
   */
  async query (sql, params) {
    const json = paramsJson(params)
    return rows(await settle(() => this.#native.query(String(sql), json)))
  }

  /**
   * Writes one message into the outbox; it is delivered only if this
   * transaction commits.
   * @param {import('./relaybox').MessageInput} message
   * @returns {Promise<string>} the message id
   */
  async enqueue (message) {
    const json = specJson(message)
    return settle(() => this.#native.enqueue(json))
  }

  /**
   * Writes many messages in one statement; all or none.
   * @param {Array<import('./relaybox').MessageInput>} messages
   * @returns {Promise<string[]>} their ids, in order
   */
  async enqueueBatch (messages) {
    if (!Array.isArray(messages)) {
      throw new ValidationError('enqueueBatch takes an array of messages', { code: 'invalid_message' })
    }
    const json = `[${messages.map(specJson).join(',')}]`
    return settle(() => this.#native.enqueueBatch(json))
  }

  /** Commits; enqueued messages become visible to relays. */
  async commit () {
    return settle(() => this.#native.commit())
  }

  /** Rolls back: nothing written in this transaction remains. */
  async rollback () {
    return settle(() => this.#native.rollback())
  }

  /**
   * Whether it was committed or rolled back.
   * @returns {Promise<boolean>}
   */
  async isFinished () {
    return settle(() => this.#native.isFinished())
  }
}

/** Store options in JavaScript spelling → the core's. */
function storeOptions (options) {
  const { migrate, ...rest } = options ?? {}
  const core = coreOptions(rest, 'Outbox options')
  return Object.keys(core).length ? stringify(core, 'invalid_config') : null
}

/**
 * An outbox in a PostgreSQL or SQLite database. Open it with
 * `await Outbox.open(url, {migrate: true})`.
 */
class Outbox {
  #native

  /** @param {object} nativeStore the addon's store; use {@link Outbox.open} */
  constructor (nativeStore) {
    if (nativeStore === undefined) {
      throw new TypeError('use `await Outbox.open(url)` to open an outbox')
    }
    this.#native = nativeStore
  }

  /**
   * Connects to `url` (`postgres://...` or `sqlite://path?mode=rwc`).
   * @param {string} url
   * @param {import('./relaybox').OutboxOptions} [options]
   * @returns {Promise<Outbox>}
   */
  static async open (url, options = {}) {
    if (typeof url !== 'string') {
      throw new ConfigError('the database URL must be a string', { code: 'invalid_config' })
    }
    const json = storeOptions(options)
    const store = await settle(() => native.NativeStore.open(url, json, Boolean(options.migrate)))
    return new Outbox(store)
  }

  /**
   * The schema as plain SQL, for your own migration tool.
   * @param {'postgres' | 'sqlite'} dialect
   * @param {{tablePrefix?: string, partitions?: number}} [options]
   * @returns {string}
   */
  static schemaSql (dialect, options = {}) {
    return sync(() => native.schemaSql(dialect, options.tablePrefix ?? 'relaybox_', options.partitions ?? 16))
  }

  /** @internal the addon's store, for relays and consumers */
  get _native () {
    return this.#native
  }

  /** The database URL with its password redacted. */
  get url () {
    return this.#native.url
  }

  /** `"postgres"` or `"sqlite"`. */
  get dialect () {
    return this.#native.dialect
  }

  /** Prefix of relaybox's tables. */
  get tablePrefix () {
    return this.#native.tablePrefix
  }

  /** Whether {@link Outbox#close} was called. */
  get closed () {
    return this.#native.closed
  }

  /** Creates or updates relaybox's tables (idempotent). */
  async migrate () {
    return settle(() => this.#native.migrate())
  }

  /**
   * Begins a transaction; you must `commit()` or `rollback()` it. Prefer
   * {@link Outbox#transaction}, which does both for you.
   * @returns {Promise<Transaction>}
   */
  async begin () {
    return new Transaction(await settle(() => this.#native.begin()))
  }

  /**
   * Runs `callback(tx)` in a transaction that commits when the callback
   * resolves and rolls back when it throws (the error is rethrown).
   * @template T
   * @param {(tx: Transaction) => Promise<T> | T} callback
   * @returns {Promise<T>} what the callback resolved with
   */
  async transaction (callback) {
    if (typeof callback !== 'function') throw new TypeError('transaction() takes a callback (tx) => ...')
    const tx = await this.begin()
    let result
    try {
      result = await callback(tx)
    } catch (err) {
      await tx.rollback().catch(() => {})
      throw err
    }
    await tx.commit()
    return result
  }

  /**
   * Enqueues one message in a transaction of its own.
   * @param {import('./relaybox').MessageInput} message
   * @returns {Promise<string>} the message id
   */
  async enqueue (message) {
    return this.transaction((tx) => tx.enqueue(message))
  }

  /**
   * The outbox INSERT of one message for another driver to run in its own
   * transaction: `{sql, params, messageId}`.
   * @param {import('./relaybox').MessageInput} message
   * @param {{placeholders?: 'dollar' | 'percent' | 'question'}} [options]
   * @returns {Promise<{sql: string, params: unknown[], messageId: string}>}
   */
  async insertStatement (message, options = {}) {
    const json = specJson(message)
    const text = await settle(() => this.#native.insertStatement(json, options.placeholders ?? 'dollar'))
    const statement = JSON.parse(text)
    return { sql: statement.sql, params: statement.params.map(untag), messageId: statement.messageId }
  }

  /**
   * SQL that, run in your own transaction, wakes relays of every process
   * when it commits (`null` on SQLite).
   * @type {string | null}
   */
  get wakeStatement () {
    return this.#native.wakeStatement ?? null
  }

  /**
   * Enqueues one message inside the caller's own node-postgres (`pg`)
   * transaction: runs the core's INSERT and wake statement on `client`, so
   * the event commits or rolls back with your rows.
   * @param {{query: Function}} client a `pg.Client` or `pg.PoolClient` inside `BEGIN`
   * @param {import('./relaybox').MessageInput} message
   * @returns {Promise<string>} the message id
   */
  async enqueueWith (client, message) {
    if (client === null || typeof client !== 'object' || typeof client.query !== 'function') {
      throw new TypeError('enqueueWith needs a node-postgres client (an object with query())')
    }
    if (this.dialect !== 'postgres') {
      throw new ConfigError('enqueueWith needs an outbox on PostgreSQL', { code: 'invalid_config' })
    }
    const { sql, params, messageId } = await this.insertStatement(message, { placeholders: 'dollar' })
    await client.query(sql, params)
    const wake = this.wakeStatement
    if (wake !== null) await client.query(wake)
    return messageId
  }

  /** Wakes this process's relays (after another driver committed outbox rows). */
  wakeRelays () {
    sync(() => this.#native.wakeRelays())
  }

  /**
   * Backlog per topic, dead letters, partitions and lease owners.
   * @returns {Promise<object>}
   */
  async status () {
    return JSON.parse(await settle(() => this.#native.status()))
  }

  /**
   * Undelivered outbox rows.
   * @returns {Promise<number>}
   */
  async pendingCount () {
    return settle(() => this.#native.pendingCount())
  }

  /**
   * Up to `limit` dead letters, oldest first: `{message, origin, attempts, lastError, failedAt}`.
   * @param {{limit?: number}} [options]
   * @returns {Promise<Array<object>>}
   */
  async deadLetters (options = {}) {
    const text = await settle(() => this.#native.deadLetters(options.limit ?? 100))
    const { Message } = require('./message')
    return JSON.parse(text).map((letter) => ({
      message: new Message(JSON.stringify(letter.message)),
      origin: letter.origin,
      attempts: letter.attempts,
      lastError: letter.last_error,
      failedAt: new Date(letter.failed_at)
    }))
  }

  /**
   * Puts dead letters (all, or those of `ids`) back into the outbox.
   * @param {string[]} [ids]
   * @returns {Promise<number>} how many
   */
  async retryDeadLetters (ids) {
    return settle(() => this.#native.retryDeadLetters(ids ?? null))
  }

  /**
   * Deletes dead letters (all, or those of `ids`).
   * @param {string[]} [ids]
   * @returns {Promise<number>} how many
   */
  async purgeDeadLetters (ids) {
    return settle(() => this.#native.purgeDeadLetters(ids ?? null))
  }

  /** Closes the connection pool; later calls reject with `ClosedError`. */
  async close () {
    return settle(() => this.#native.close())
  }
}

module.exports = { Outbox, Transaction }
