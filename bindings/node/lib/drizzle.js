'use strict'
/**
 * Drizzle ORM on node-postgres: the event is written with the `tx` of your
 * `db.transaction(...)`, and a consumer's handler receives the `tx` holding
 * the inbox row.
 *
 * ```js
 * const { enqueue } = require('relaybox/lib/drizzle')
 * await db.transaction(async (tx) => {
 *   await tx.insert(orders).values({ id: 42 })
 *   await enqueue(outbox, tx, { topic: 'orders', payload: { id: 42 } })
 * })
 * ```
 * @module relaybox/drizzle
 */

const { writers, unsupported, splitQuestion, hostConsumer } = require('./host')

const INTEGRATION = 'relaybox/drizzle'

/** drizzle-orm's `sql`, `is` and `PgTransaction`, from the application's install. */
function drizzle () {
  const { sql, is } = require('drizzle-orm')
  const { PgTransaction, PgDatabase } = require('drizzle-orm/pg-core')
  return { sql, is, PgTransaction, PgDatabase }
}

/** Runs `text` (`?` placeholders) through Drizzle's `execute`; its rows. */
async function exec (tx, text, params) {
  const { sql } = drizzle()
  const parts = splitQuestion(text)
  const chunks = [sql.raw(parts[0])]
  params.forEach((value, i) => chunks.push(sql.param(value), sql.raw(parts[i + 1])))
  const result = await tx.execute(sql.join(chunks))
  return Array.isArray(result) ? result : result.rows
}

/** The writer for `tx`. */
function via (tx) {
  const { is, PgTransaction } = drizzle()
  if (tx === null || typeof tx !== 'object' || !is(tx, PgTransaction)) {
    throw unsupported(INTEGRATION, 'the tx of a Drizzle db.transaction() on PostgreSQL')
  }
  return { integration: INTEGRATION, placeholders: 'question', exec: (text, params) => exec(tx, text, params) }
}

/** `enqueue(outbox, tx, message)` and `enqueueBatch(outbox, tx, messages)` (see the `.d.ts`). */
const { enqueue, enqueueBatch } = writers(via)

/**
 * A consumer whose handler receives the `tx` of a `db.transaction()` holding
 * the message's inbox row.
 * @param {import('./outbox').Outbox} outbox
 * @param {object} db the Drizzle database (node-postgres, the outbox's database)
 * @param {string} topic
 * @param {(message: import('./message').Message, tx: object) => Promise<void> | void} handler
 * @param {import('./relaybox').ConsumerOptions} options at least `group`
 * @returns {import('./consumer').Consumer} call `start()` on it
 */
function consumer (outbox, db, topic, handler, options) {
  const { is, PgDatabase } = drizzle()
  if (db === null || typeof db !== 'object' || !is(db, PgDatabase)) {
    throw unsupported(INTEGRATION, 'a Drizzle database on PostgreSQL for the consumer')
  }
  return hostConsumer(outbox, topic, handler, options, {
    placeholders: 'question',
    exec,
    transaction: (body) => db.transaction(body)
  })
}

module.exports = { enqueue, enqueueBatch, consumer }
