'use strict'
/**
 * Kysely (PostgreSQL dialect): the event is written with the `trx` of your
 * `db.transaction().execute(...)`, and a consumer's handler receives the
 * `trx` holding the inbox row.
 *
 * ```js
 * const { enqueue } = require('relaybox/lib/kysely')
 * await db.transaction().execute(async (trx) => {
 *   await trx.insertInto('orders').values({ id: 42 }).execute()
 *   await enqueue(outbox, trx, { topic: 'orders', payload: { id: 42 } })
 * })
 * ```
 * @module relaybox/kysely
 */

const { writers, unsupported, finished, hostConsumer } = require('./host')

const INTEGRATION = 'relaybox/kysely'

/** Whether `db` is a Kysely instance (or transaction) with the PostgreSQL adapter. */
function isPgKysely (db) {
  if (db === null || typeof db !== 'object' || typeof db.executeQuery !== 'function' ||
    typeof db.getExecutor !== 'function') return false
  const adapter = db.getExecutor().adapter
  return /Postgres/.test(adapter?.constructor?.name ?? '')
}

/** Runs `sql` (`$n` placeholders) on `trx`; its rows. */
async function exec (trx, sql, params) {
  const { CompiledQuery } = require('kysely')
  const result = await trx.executeQuery(CompiledQuery.raw(sql, params))
  return result.rows
}

/** The writer for `trx`. */
function via (trx) {
  if (!isPgKysely(trx) || trx.isTransaction !== true) {
    throw unsupported(INTEGRATION, 'the trx of a Kysely transaction on PostgreSQL (not the Kysely instance)')
  }
  if (trx.isCommitted === true || trx.isRolledBack === true) throw finished(INTEGRATION)
  return { integration: INTEGRATION, placeholders: 'dollar', exec: (sql, params) => exec(trx, sql, params) }
}

/** `enqueue(outbox, tx, message)` and `enqueueBatch(outbox, tx, messages)` (see the `.d.ts`). */
const { enqueue, enqueueBatch } = writers(via)

/**
 * A consumer whose handler receives the `trx` of a Kysely transaction
 * holding the message's inbox row.
 * @param {import('./outbox').Outbox} outbox
 * @param {object} db the Kysely instance (PostgreSQL dialect, the outbox's database)
 * @param {string} topic
 * @param {(message: import('./message').Message, trx: object) => Promise<void> | void} handler
 * @param {import('./relaybox').ConsumerOptions} options at least `group`
 * @returns {import('./consumer').Consumer} call `start()` on it
 */
function consumer (outbox, db, topic, handler, options) {
  if (!isPgKysely(db)) throw unsupported(INTEGRATION, 'a Kysely instance with the PostgreSQL dialect for the consumer')
  return hostConsumer(outbox, topic, handler, options, {
    placeholders: 'dollar',
    exec,
    transaction: (body) => db.transaction().execute(body)
  })
}

module.exports = { enqueue, enqueueBatch, consumer }
