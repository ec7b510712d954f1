'use strict'
/**
 * The host-transaction protocol shared by the database-library integrations
 * (`relaybox/lib/pg`, `knex`, `drizzle`, `kysely`, `typeorm`, `prisma`): the core
 * generates the outbox INSERTs (one per 1000 messages) and the wake-up
 * NOTIFY; an integration runs them through its library's raw-query API on
 * the application's connection, inside the application's transaction. A
 * consumer in host mode hands each delivery's inbox statement to the
 * integration, which runs it and the handler in one transaction of the
 * library's.
 * @module relaybox/host
 */

const { settle } = require('./native')
const { specJson, untag } = require('./values')
const { ConfigError, ClosedError, StoreError, ValidationError } = require('./errors')

/**
 * Identifies the database a connection reaches (its name and its server's
 * start time) and tells whether the connection is inside a transaction
 * block: `now()` is the transaction's start, `statement_timestamp()` this
 * statement's; outside a block every statement is its own transaction and
 * the two are equal.
 */
const CHECK_SQL =
  'SELECT current_database() AS db, ' +
  'CAST(CAST(EXTRACT(EPOCH FROM pg_postmaster_start_time()) * 1000000 AS bigint) AS text) AS started, ' +
  'now() <> statement_timestamp() AS open'

/** The outbox database's identity, per outbox. */
const identities = new WeakMap()

/**
 * `db` and `started` of the outbox's database (queried once per outbox, and
 * again when a connection's identity differs from it).
 * @param {import('./outbox').Outbox} outbox
 * @returns {Promise<{db: string, started: string}>}
 */
async function outboxIdentity (outbox) {
  let identity = identities.get(outbox)
  if (identity === undefined) {
    identity = outbox.transaction(async (tx) => {
      const [row] = await tx.query(CHECK_SQL)
      return { db: row.db, started: row.started }
    })
    identities.set(outbox, identity)
    identity.catch(() => identities.delete(outbox))
  }
  return identity
}

/**
 * The outbox INSERTs writing `messages`, every message validated first.
 * @param {import('./outbox').Outbox} outbox
 * @param {unknown[]} messages
 * @param {'dollar' | 'question'} placeholders
 * @param {string} integration name for errors
 * @returns {Promise<Array<{sql: string, params: unknown[], messageIds: string[], wake: string | null}>>}
 */
async function statements (outbox, messages, placeholders, integration) {
  if (outbox === null || typeof outbox !== 'object' || typeof outbox._native !== 'object') {
    throw new ConfigError(`${integration}: the first argument must be an Outbox`, { code: 'invalid_config' })
  }
  if (outbox.dialect !== 'postgres') {
    throw new ConfigError(`${integration} writes into a PostgreSQL outbox; this outbox is on ${outbox.dialect}`,
      { code: 'invalid_config' })
  }
  if (!Array.isArray(messages)) {
    throw new ValidationError('enqueueBatch takes an array of messages', { code: 'invalid_message' })
  }
  if (messages.length === 0) return []
  const json = `[${messages.map(specJson).join(',')}]`
  const text = await settle(() => outbox._native.insertBatchStatements(json, placeholders))
  return JSON.parse(text).map((s) => ({ sql: s.sql, params: s.params.map(untag), messageIds: s.messageIds, wake: s.wake }))
}

/**
 * Checks that the connection `exec` runs on is inside an open transaction
 * on the outbox's database.
 * @param {import('./outbox').Outbox} outbox
 * @param {(sql: string, params: unknown[]) => Promise<Array<Record<string, unknown>>>} exec
 * @param {string} integration
 */
async function checkConnection (outbox, exec, integration) {
  let expected = await outboxIdentity(outbox)
  let row
  try {
    [row] = await exec(CHECK_SQL, [])
  } catch (err) {
    // Libraries that track their transaction's end refuse the query.
    if (/already (been )?(committed|rolled back)|query already complete|already closed|released/i.test(err?.message)) {
      throw new ClosedError(`${integration}: the transaction was already committed or rolled back (${err.message})`,
        { code: 'closed' })
    }
    throw new StoreError(`${integration}: the transaction's connection cannot run a query: ${err.message}`,
      { code: 'database' })
  }
  if (!row || !row.open) {
    throw new ClosedError(`${integration}: the connection is not inside an open transaction (it was committed or rolled back, or never begun)`,
      { code: 'closed' })
  }
  const same = (identity) => row.db === identity.db && String(row.started) === identity.started
  if (!same(expected)) {
    // The outbox's server may have restarted since its identity was read.
    identities.delete(outbox)
    expected = await outboxIdentity(outbox)
  }
  if (!same(expected)) {
    throw new ConfigError(`${integration}: the transaction is on database ${JSON.stringify(row.db)} of another server or name than the outbox's (${JSON.stringify(expected.db)}); the event must be written where the outbox is`,
      { code: 'invalid_config' })
  }
}

/**
 * Writes `messages` through `exec` (the library's raw query inside the
 * caller's transaction): validates them, checks the connection, then runs
 * the INSERTs and the wake-up. Nothing is written when a check fails.
 * @param {import('./outbox').Outbox} outbox
 * @param {unknown[]} messages
 * @param {{integration: string, placeholders: 'dollar' | 'question', exec: (sql: string, params: unknown[]) => Promise<Array<Record<string, unknown>>>}} via
 * @returns {Promise<string[]>} the message ids, in order
 */
async function write (outbox, messages, via) {
  const list = await statements(outbox, messages, via.placeholders, via.integration)
  if (list.length === 0) return []
  await checkConnection(outbox, via.exec, via.integration)
  const ids = []
  for (const statement of list) {
    await via.exec(statement.sql, statement.params)
    if (statement.wake) await via.exec(statement.wake, [])
    ids.push(...statement.messageIds)
  }
  return ids
}

/**
 * An integration's `enqueue` and `enqueueBatch`, given how it makes a
 * writer (`via`) from the caller's transaction object. Their types are in
 * each integration's `.d.ts`.
 * @param {(tx: unknown) => {integration: string, placeholders: 'dollar' | 'question', exec: Function}} via
 * @returns {{enqueue: (outbox: object, tx: unknown, message: unknown) => Promise<string>, enqueueBatch: (outbox: object, tx: unknown, messages: unknown[]) => Promise<string[]>}}
 */
function writers (via) {
  return {
    /** Writes one message in the caller's transaction; its id. */
    enqueue: async (outbox, tx, message) => (await write(outbox, [message], via(tx)))[0],
    /** Writes many messages in the caller's transaction, all or none; their ids in order. */
    enqueueBatch: async (outbox, tx, messages) => write(outbox, messages, via(tx))
  }
}

/** The integration's refusal of an object that is not its transaction. */
function unsupported (integration, what) {
  return new ConfigError(`${integration}: expected ${what}`, { code: 'invalid_config' })
}

/** The integration's refusal of a transaction it knows is finished. */
function finished (integration) {
  return new ClosedError(`${integration}: the transaction was already committed or rolled back`, { code: 'closed' })
}

/**
 * Splits SQL in `?` style into the text around the placeholders.
 * @param {string} sql
 * @returns {string[]} one more part than placeholders
 */
function splitQuestion (sql) {
  return sql.split('?')
}

/**
 * A consumer in host mode for an integration.
 * @param {import('./outbox').Outbox} outbox
 * @param {string} topic
 * @param {Function} handler `(message, tx) => ...`, `tx` the library's transaction
 * @param {object} options consumer options (at least `group`)
 * @param {{placeholders: 'dollar' | 'question', transaction: (body: (tx: unknown) => Promise<void>) => Promise<void>, exec: (tx: unknown, sql: string, params: unknown[]) => Promise<unknown[]>}} host
 * @returns {import('./consumer').Consumer}
 */
function hostConsumer (outbox, topic, handler, options, host) {
  const { Consumer } = require('./consumer')
  return new Consumer(outbox, topic, handler, options, host)
}

module.exports = { CHECK_SQL, write, writers, unsupported, finished, splitQuestion, hostConsumer, outboxIdentity }
