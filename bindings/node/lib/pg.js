'use strict'
/**
 * node-postgres (`pg`): the event is written with the `PoolClient` (or
 * `Client`) of your transaction, and a consumer's handler receives the
 * `PoolClient` of the transaction that holds the inbox row.
 *
 * ```js
 * const { enqueue } = require('relaybox/lib/pg')
 * const client = await pool.connect()
 * await client.query('BEGIN')
 * await client.query('INSERT INTO orders (id) VALUES ($1)', [42])
 * await enqueue(outbox, client, { topic: 'orders', payload: { id: 42 } })
 * await client.query('COMMIT')
 * ```
 * @module relaybox/pg
 */

const { writers, unsupported, hostConsumer } = require('./host')

const INTEGRATION = 'relaybox/pg'

/** Whether `client` is a node-postgres client (a pool has `totalCount`). */
function isClient (client) {
  return client !== null && typeof client === 'object' && typeof client.query === 'function' &&
    typeof client.totalCount !== 'number'
}

/** The writer for `client`. */
function via (client) {
  if (!isClient(client)) throw unsupported(INTEGRATION, 'a node-postgres PoolClient or Client inside BEGIN (not a Pool)')
  return {
    integration: INTEGRATION,
    placeholders: 'dollar',
    exec: async (sql, params) => (await client.query(sql, params)).rows
  }
}

/** `enqueue(outbox, tx, message)` and `enqueueBatch(outbox, tx, messages)` (see the `.d.ts`). */
const { enqueue, enqueueBatch } = writers(via)

/**
 * A consumer whose handler receives the `PoolClient` of a transaction (taken
 * from `pool`) holding the message's inbox row: the handler's writes on it
 * commit with the row, or roll back with it when the handler throws.
 * @param {import('./outbox').Outbox} outbox
 * @param {object} pool a `pg.Pool` of the outbox's database
 * @param {string} topic
 * @param {(message: import('./message').Message, client: object) => Promise<void> | void} handler
 * @param {import('./relaybox').ConsumerOptions} options at least `group`
 * @returns {import('./consumer').Consumer} call `start()` on it
 */
function consumer (outbox, pool, topic, handler, options) {
  if (pool === null || typeof pool !== 'object' || typeof pool.connect !== 'function') {
    throw unsupported(INTEGRATION, 'a pg.Pool for the consumer')
  }
  return hostConsumer(outbox, topic, handler, options, {
    placeholders: 'dollar',
    exec: async (client, sql, params) => (await client.query(sql, params)).rows,
    transaction: async (body) => {
      const client = await pool.connect()
      // A connection whose BEGIN, COMMIT or ROLLBACK failed is destroyed,
      // not returned to the pool.
      let broken = true
      try {
        await client.query('BEGIN')
        try {
          await body(client)
        } catch (err) {
          await client.query('ROLLBACK')
          broken = false
          throw err
        }
        await client.query('COMMIT')
        broken = false
      } finally {
        client.release(broken)
      }
    }
  })
}

module.exports = { enqueue, enqueueBatch, consumer }
