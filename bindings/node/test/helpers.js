'use strict'
/**
 * Shared by the test files: the real PostgreSQL and Kafka of `dev/services`
 * (a test fails, never skips, when they are missing), a table prefix of each
 * test's own (dropped afterwards), and a polling helper.
 */

const assert = require('node:assert/strict')
const net = require('node:net')
const { randomUUID } = require('node:crypto')
const pg = require('pg')

const relaybox = require('..')

const START_HINT = 'start them with `dev/services start && eval "$(dev/services env)"`'

/** A required environment variable; fails the test with a hint when unset. */
function requiredEnv (name) {
  const value = (process.env[name] ?? '').trim()
  assert.ok(value, `${name} is not set: the Node tests use the real services; ${START_HINT}`)
  return value
}

/** URL of the PostgreSQL test database. */
function pgUrl () {
  return requiredEnv('RELAYBOX_TEST_DATABASE_URL')
}

/** Bootstrap servers of the real Kafka broker; fails when none answers. */
async function kafkaBootstrap () {
  const servers = requiredEnv('RELAYBOX_KAFKA_BOOTSTRAP')
  const [host, port] = servers.split(',')[0].split(':')
  await new Promise((resolve, reject) => {
    const socket = net.connect({ host, port: Number(port), timeout: 5000 }, () => { socket.end(); resolve() })
    socket.on('error', (err) => reject(new Error(`no Kafka broker answers at ${servers} (${err.message}); ${START_HINT}`)))
    socket.on('timeout', () => { socket.destroy(); reject(new Error(`no Kafka broker answers at ${servers}; ${START_HINT}`)) })
  })
  return servers
}

/** A fresh name for topics and groups. */
function unique (what) {
  return `${what}-${randomUUID().slice(0, 8)}`
}

/** Runs `body(client)` with a connected node-postgres client, closed afterwards. */
async function withPg (body) {
  const client = new pg.Client({ connectionString: pgUrl() })
  await client.connect()
  try {
    return await body(client)
  } finally {
    await client.end()
  }
}

/** Rows in `table`. */
async function count (table, where = '') {
  return withPg(async (client) => {
    const { rows } = await client.query(`SELECT count(*)::int AS n FROM "${table}" ${where}`)
    return rows[0].n
  })
}

/**
 * A migrated PostgreSQL outbox with a table prefix of this test's own; its
 * tables are dropped after the test.
 * @param {import('node:test').TestContext} t
 */
async function openOutbox (t, options = {}) {
  const prefix = `nd_${randomUUID().replace(/-/g, '').slice(0, 10)}_`
  const outbox = await relaybox.Outbox.open(pgUrl(), { migrate: true, tablePrefix: prefix, ...options })
  t.after(async () => {
    await outbox.close()
    await withPg(async (client) => {
      const { rows } = await client.query(
        'SELECT tablename FROM pg_tables WHERE schemaname = current_schema() AND tablename LIKE $1', [`${prefix}%`])
      for (const { tablename } of rows) await client.query(`DROP TABLE IF EXISTS "${tablename}" CASCADE`)
    })
  })
  return { outbox, prefix }
}

/** Polls `probe` until it returns a truthy value; fails with `what` after `timeout` ms. */
async function waitFor (what, probe, timeout = 30000) {
  const deadline = Date.now() + timeout
  let last
  while (Date.now() < deadline) {
    last = await probe()
    if (last) return last
    await new Promise((resolve) => setTimeout(resolve, 20))
  }
  assert.fail(`timed out after ${timeout} ms waiting for ${what}; last observed: ${JSON.stringify(last)}`)
}

/** Resolves after `ms`. */
function sleep (ms) {
  return new Promise((resolve) => setTimeout(resolve, ms))
}

module.exports = { relaybox, requiredEnv, pgUrl, kafkaBootstrap, unique, withPg, count, openOutbox, waitFor, sleep }
