'use strict'
/**
 * TypeORM (postgres driver): the event is written with the `EntityManager`
 * of your `dataSource.transaction(...)` or a `QueryRunner` after
 * `startTransaction()`, and a consumer's handler receives the
 * `EntityManager` of the transaction holding the inbox row.
 *
 * ```js
 * const { enqueue } = require('relaybox/lib/typeorm')
 * await dataSource.transaction(async (manager) => {
 *   await manager.insert(Order, { id: 42 })
 *   await enqueue(outbox, manager, { topic: 'orders', payload: { id: 42 } })
 * })
 * ```
 * @module relaybox/typeorm
 */

const { writers, unsupported, finished, hostConsumer } = require('./host')

const INTEGRATION = 'relaybox/typeorm'
const EXPECTED = 'the EntityManager of a TypeORM transaction or a QueryRunner in a transaction (postgres driver)'

/** Whether `x` looks like a TypeORM QueryRunner. */
function isQueryRunner (x) {
  return x !== null && typeof x === 'object' && typeof x.startTransaction === 'function' &&
    typeof x.query === 'function' && 'isTransactionActive' in x
}

/** Runs `sql` (`$n` placeholders) on `runner`; its rows. */
async function exec (runner, sql, params) {
  const result = await runner.query(sql, params)
  return Array.isArray(result) ? result : []
}

/** The query runner of `target` (an EntityManager or a QueryRunner). */
function runnerOf (target) {
  if (isQueryRunner(target)) return target
  if (target !== null && typeof target === 'object' && typeof target.transaction === 'function' &&
    typeof target.query === 'function' && 'queryRunner' in target) {
    if (!isQueryRunner(target.queryRunner)) {
      throw unsupported(INTEGRATION, `${EXPECTED}; this EntityManager belongs to no transaction`)
    }
    return target.queryRunner
  }
  throw unsupported(INTEGRATION, EXPECTED)
}

/** The writer for `target`. */
function via (target) {
  const runner = runnerOf(target)
  if (runner.connection?.options?.type !== 'postgres') throw unsupported(INTEGRATION, EXPECTED)
  if (runner.isReleased || !runner.isTransactionActive) throw finished(INTEGRATION)
  return { integration: INTEGRATION, placeholders: 'dollar', exec: (sql, params) => exec(runner, sql, params) }
}

/** `enqueue(outbox, tx, message)` and `enqueueBatch(outbox, tx, messages)` (see the `.d.ts`). */
const { enqueue, enqueueBatch } = writers(via)

/**
 * A consumer whose handler receives the `EntityManager` of a
 * `dataSource.transaction()` holding the message's inbox row.
 * @param {import('./outbox').Outbox} outbox
 * @param {object} dataSource an initialized TypeORM DataSource (postgres, the outbox's database)
 * @param {string} topic
 * @param {(message: import('./message').Message, manager: object) => Promise<void> | void} handler
 * @param {import('./relaybox').ConsumerOptions} options at least `group`
 * @returns {import('./consumer').Consumer} call `start()` on it
 */
function consumer (outbox, dataSource, topic, handler, options) {
  if (dataSource === null || typeof dataSource !== 'object' || typeof dataSource.transaction !== 'function' ||
    dataSource.options?.type !== 'postgres') {
    throw unsupported(INTEGRATION, 'a TypeORM DataSource with the postgres driver for the consumer')
  }
  return hostConsumer(outbox, topic, handler, options, {
    placeholders: 'dollar',
    exec: (manager, sql, params) => exec(manager.queryRunner, sql, params),
    transaction: (body) => dataSource.transaction(body)
  })
}

module.exports = { enqueue, enqueueBatch, consumer }
