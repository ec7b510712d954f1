'use strict'
/**
 * Knex (PostgreSQL client): the event is written with the `trx` of your
 * `knex.transaction(...)`, and a consumer's handler receives the `trx`
 * holding the inbox row.
 *
 * ```js
 * const { enqueue } = require('relaybox/lib/knex')
 * await knex.transaction(async (trx) => {
 *   await trx('orders').insert({ id: 42 })
 *   await enqueue(outbox, trx, { topic: 'orders', payload: { id: 42 } })
 * })
 * ```
 * @module relaybox/knex
 */

const { writers, unsupported, finished, hostConsumer } = require('./host')

const INTEGRATION = 'relaybox/knex'
const PG_CLIENTS = new Set(['pg', 'postgres', 'postgresql'])

/** Whether `db` is a Knex instance or transaction on PostgreSQL. */
function isPgKnex (db) {
  return typeof db === 'function' && typeof db.raw === 'function' && db.client !== undefined &&
    (db.client.dialect === 'postgresql' || PG_CLIENTS.has(db.client.config?.client))
}

/** Runs `sql` (`?` placeholders) on `trx`; its rows. */
async function exec (trx, sql, params) {
  const result = await trx.raw(sql, params)
  return result.rows
}

/** The writer for `trx`. */
function via (trx) {
  if (!isPgKnex(trx) || trx.isTransaction !== true) {
    throw unsupported(INTEGRATION, 'the trx of a knex.transaction() on PostgreSQL (not the knex instance)')
  }
  if (trx.isCompleted()) throw finished(INTEGRATION)
  return { integration: INTEGRATION, placeholders: 'question', exec: (sql, params) => exec(trx, sql, params) }
}

/** `enqueue(outbox, tx, message)` and `enqueueBatch(outbox, tx, messages)` (see the `.d.ts`). */
const { enqueue, enqueueBatch } = writers(via)

/**
 * A consumer whose handler receives the `trx` of a `knex.transaction()`
 * holding the message's inbox row.
 * @param {import('./outbox').Outbox} outbox
 * @param {Function} knex the Knex instance (PostgreSQL, the outbox's database)
 * @param {string} topic
 * @param {(message: import('./message').Message, trx: Function) => Promise<void> | void} handler
 * @param {import('./relaybox').ConsumerOptions} options at least `group`
 * @returns {import('./consumer').Consumer} call `start()` on it
 */
function consumer (outbox, knex, topic, handler, options) {
  if (!isPgKnex(knex)) throw unsupported(INTEGRATION, 'a Knex instance on PostgreSQL for the consumer')
  return hostConsumer(outbox, topic, handler, options, {
    placeholders: 'question',
    exec,
    transaction: (body) => knex.transaction(body)
  })
}

module.exports = { enqueue, enqueueBatch, consumer }
