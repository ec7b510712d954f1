'use strict'
/**
 * Prisma (PostgreSQL, with or without a driver adapter): the event is
 * written with the `tx` client of your interactive `prisma.$transaction`,
 * and a consumer's handler receives the `tx` client holding the inbox row.
 *
 * ```js
 * const { enqueue } = require('relaybox/lib/prisma')
 * await prisma.$transaction(async (tx) => {
 *   await tx.order.create({ data: { id: 42 } })
 *   await enqueue(outbox, tx, { topic: 'orders', payload: { id: 42 } })
 * })
 * ```
 * @module relaybox/prisma
 */

const { writers, unsupported, hostConsumer } = require('./host')

const INTEGRATION = 'relaybox/prisma'

/** Whether `client` is a Prisma client (root or transaction) not known to be on another database. */
function isPrisma (client) {
  return client !== null && typeof client === 'object' && typeof client.$queryRawUnsafe === 'function' &&
    (client._activeProvider === undefined || client._activeProvider === 'postgresql')
}

/** Runs `sql` (`$n` placeholders) on `tx`; its rows. */
async function exec (tx, sql, params) {
  const rows = await tx.$queryRawUnsafe(sql, ...params)
  return Array.isArray(rows) ? rows : []
}

/** Where Prisma 7 marks the client of an interactive transaction. */
const SCOPE = Symbol.for('prisma.client.transaction.scope_context')

/** Whether `tx` is the client of an interactive transaction (before Prisma 7 it has no `$transaction`). */
function isTransactionClient (tx) {
  return tx[SCOPE]?.kind === 'nested' || typeof tx.$transaction !== 'function'
}

/** The writer for `tx`. */
function via (tx) {
  if (!isPrisma(tx) || !isTransactionClient(tx)) {
    throw unsupported(INTEGRATION, 'the tx client of an interactive prisma.$transaction(async (tx) => ...) on PostgreSQL (not the PrismaClient)')
  }
  return { integration: INTEGRATION, placeholders: 'dollar', exec: (sql, params) => exec(tx, sql, params) }
}

/** `enqueue(outbox, tx, message)` and `enqueueBatch(outbox, tx, messages)` (see the `.d.ts`). */
const { enqueue, enqueueBatch } = writers(via)

/**
 * A consumer whose handler receives the `tx` client of an interactive
 * `prisma.$transaction` holding the message's inbox row.
 * @param {import('./outbox').Outbox} outbox
 * @param {object} prisma the PrismaClient (PostgreSQL, the outbox's database)
 * @param {string} topic
 * @param {(message: import('./message').Message, tx: object) => Promise<void> | void} handler
 * @param {import('./relaybox').ConsumerOptions & {transactionTimeout?: number}} options at least
 *   `group`; `transactionTimeout` (ms, default 30000) bounds each handler's transaction
 * @returns {import('./consumer').Consumer} call `start()` on it
 */
function consumer (outbox, prisma, topic, handler, options) {
  if (!isPrisma(prisma) || typeof prisma.$transaction !== 'function') {
    throw unsupported(INTEGRATION, 'a PrismaClient on PostgreSQL for the consumer')
  }
  const { transactionTimeout = 30000, ...settings } = options ?? {}
  return hostConsumer(outbox, topic, handler, settings, {
    placeholders: 'dollar',
    exec,
    transaction: (body) => prisma.$transaction(body, { timeout: transactionTimeout })
  })
}

module.exports = { enqueue, enqueueBatch, consumer }
