'use strict'
// The database-library integrations against the real PostgreSQL with the
// real libraries: the event joins the library's transaction (rollback →
// nothing, commit → delivered once, the relay woken at commit), bad
// transaction objects are refused with nothing written, and a consumer in
// host mode runs its handler in the library's transaction holding the inbox
// row (a throwing handler's writes roll back; a redelivery, also after the
// consumer process was killed between its commit and its acknowledgement, is
// skipped).
require('reflect-metadata')
const { test } = require('node:test')
const assert = require('node:assert/strict')
const pg = require('pg')
const knexFactory = require('knex')
const { drizzle } = require('drizzle-orm/node-postgres')
const { sql } = require('drizzle-orm')
const { Kysely, PostgresDialect } = require('kysely')
const typeorm = require('typeorm')
const { PrismaClient } = require('@prisma/client')
const { PrismaPg } = require('@prisma/adapter-pg')

const { relaybox, pgUrl, count, withPg, openOutbox, waitFor, unique } = require('./helpers')

/** The URL of the other database on the same server (`dev/services` creates both). */
function otherDatabaseUrl () {
  const url = new URL(pgUrl())
  url.pathname = url.pathname === '/relaybox' ? '/relaybox_test' : '/relaybox'
  return url.toString()
}

/**
 * Per library: how to connect, run a transaction (commits when `body`
 * resolves, rolls back when it throws), write a business row through the
 * library, and an object that is not a transaction.
 */
const LIBRARIES = {
  pg: {
    module: require('../lib/pg'),
    open: async (url) => {
      const pool = new pg.Pool({ connectionString: url, max: 3 })
      return { db: pool, close: () => pool.end() }
    },
    transaction: async (pool, body) => {
      const client = await pool.connect()
      try {
        await client.query('BEGIN')
        try {
          const result = await body(client)
          await client.query('COMMIT')
          return result
        } catch (err) {
          await client.query('ROLLBACK')
          throw err
        }
      } finally {
        client.release()
      }
    },
    insert: (client, table, id) => client.query(`INSERT INTO ${table} (id) VALUES ($1)`, [id]),
    notTransaction: (pool) => pool
  },
  knex: {
    module: require('../lib/knex'),
    open: async (url) => {
      const knex = knexFactory({ client: 'pg', connection: url, pool: { min: 0, max: 3 } })
      return { db: knex, close: () => knex.destroy() }
    },
    transaction: (knex, body) => knex.transaction(body),
    insert: (trx, table, id) => trx(table).insert({ id }),
    notTransaction: (knex) => knex
  },
  drizzle: {
    module: require('../lib/drizzle'),
    open: async (url) => {
      const pool = new pg.Pool({ connectionString: url, max: 3 })
      return { db: drizzle(pool), close: () => pool.end() }
    },
    transaction: (db, body) => db.transaction(body),
    insert: (tx, table, id) => tx.execute(sql`INSERT INTO ${sql.identifier(table)} (id) VALUES (${id})`),
    notTransaction: (db) => db
  },
  kysely: {
    module: require('../lib/kysely'),
    open: async (url) => {
      const db = new Kysely({ dialect: new PostgresDialect({ pool: new pg.Pool({ connectionString: url, max: 3 }) }) })
      return { db, close: () => db.destroy() }
    },
    transaction: (db, body) => db.transaction().execute(body),
    insert: (trx, table, id) => trx.insertInto(table).values({ id }).execute(),
    notTransaction: (db) => db
  },
  typeorm: {
    module: require('../lib/typeorm'),
    open: async (url) => {
      const dataSource = new typeorm.DataSource({ type: 'postgres', url, poolSize: 3 })
      await dataSource.initialize()
      return { db: dataSource, close: () => dataSource.destroy() }
    },
    transaction: (dataSource, body) => dataSource.transaction(body),
    insert: (manager, table, id) => manager.query(`INSERT INTO ${table} (id) VALUES ($1)`, [id]),
    notTransaction: (dataSource) => dataSource.manager
  },
  prisma: {
    module: require('../lib/prisma'),
    open: async (url) => {
      const prisma = new PrismaClient({ adapter: new PrismaPg({ connectionString: url, max: 3 }) })
      return { db: prisma, close: () => prisma.$disconnect() }
    },
    transaction: (prisma, body) => prisma.$transaction(body),
    insert: (tx, table, id) => tx.$executeRawUnsafe(`INSERT INTO ${table} (id) VALUES ($1)`, id),
    notTransaction: (prisma) => prisma
  }
}

/** Opens the library on `url`, closed after the test. */
async function connect (t, lib, url) {
  const { db, close } = await lib.open(url)
  t.after(close)
  return db
}

for (const [name, lib] of Object.entries(LIBRARIES)) {
  test(`${name}: the event commits or rolls back with the library's transaction`, async (t) => {
    const { outbox, prefix } = await openOutbox(t)
    const { enqueue, enqueueBatch } = lib.module
    const db = await connect(t, lib, pgUrl())
    const orders = `${prefix}orders`
    await withPg((client) => client.query(`CREATE TABLE ${orders} (id int8 PRIMARY KEY)`))
    const topic = unique(`${name}-orders`)

    await assert.rejects(lib.transaction(db, async (tx) => {
      await lib.insert(tx, orders, 1)
      await enqueue(outbox, tx, { topic, key: '1', payload: { id: 1 } })
      await enqueueBatch(outbox, tx, [{ topic, payload: { id: 1, n: 1 } }, { topic, payload: { id: 1, n: 2 } }])
      throw new Error('roll back')
    }), /roll back/)
    assert.equal(await count(orders), 0)
    assert.equal(await count(`${prefix}outbox`), 0)

    const seen = []
    // The relay polls only every minute: delivery within seconds shows that
    // the wake-up ran in the library's transaction and woke it at commit.
    const relay = new relaybox.Relay(outbox, { pollInterval: 60000 }).start()
    const consumer = new relaybox.Consumer(outbox, topic, (m) => { seen.push(m.id) }, { group: name }).start()
    t.after(() => Promise.all([consumer.close(), relay.close()]))

    const ids = await lib.transaction(db, async (tx) => {
      await lib.insert(tx, orders, 2)
      const one = await enqueue(outbox, tx, { topic, key: '2', payload: { id: 2 } })
      const more = await enqueueBatch(outbox, tx, [{ topic, payload: { id: 2, n: 1 } }, { topic, payload: { id: 2, n: 2 } }])
      assert.equal(await count(`${prefix}outbox`), 0, 'not visible before the commit')
      return [one, ...more]
    })
    assert.equal(ids.length, 3)
    assert.equal(await count(orders), 1)
    await waitFor('the three committed events consumed', () => seen.length >= 3, 10000)
    await consumer.close()
    assert.deepEqual([...seen].sort(), [...ids].sort())
    assert.equal(consumer.stats().processed, 3)
  })

  test(`${name}: an unsupported object, a finished transaction or another database is refused, nothing written`, async (t) => {
    const { outbox, prefix } = await openOutbox(t)
    const { enqueue, enqueueBatch } = lib.module
    const db = await connect(t, lib, pgUrl())
    const message = { topic: unique('refused'), payload: { id: 1 } }

    await assert.rejects(enqueue(outbox, lib.notTransaction(db), message),
      (err) => err instanceof relaybox.ConfigError && err.code === 'invalid_config' && /expected/.test(err.message))
    await assert.rejects(enqueue(outbox, {}, message), relaybox.ConfigError)
    await assert.rejects(enqueueBatch(outbox, null, [message]), relaybox.ConfigError)

    const finished = await lib.transaction(db, async (tx) => tx)
    await assert.rejects(enqueue(outbox, finished, message),
      (err) => err instanceof relaybox.ClosedError && err.code === 'closed')

    const other = await connect(t, lib, otherDatabaseUrl())
    await assert.rejects(lib.transaction(other, (tx) => enqueue(outbox, tx, message)),
      (err) => err instanceof relaybox.ConfigError && /another server or name/.test(err.message))

    await assert.rejects(lib.transaction(db, (tx) => enqueue(outbox, tx, { topic: 'no spaces', payload: 1 })),
      (err) => err instanceof relaybox.ValidationError && err.code === 'invalid_topic')
    assert.equal(await count(`${prefix}outbox`), 0)
  })

  test(`${name}: a host-mode consumer's handler writes in the transaction holding the inbox row`, async (t) => {
    const { outbox, prefix } = await openOutbox(t)
    const db = await connect(t, lib, pgUrl())
    const handled = `${prefix}handled`
    await withPg((client) => client.query(`CREATE TABLE ${handled} (id text PRIMARY KEY)`))
    const topic = unique(`${name}-host`)
    const group = `${name}-host`
    const good = await outbox.enqueue({ topic, key: 'a', payload: { fail: false } })
    const bad = await outbox.enqueue({ topic, key: 'b', payload: { fail: true } })
    const relay = new relaybox.Relay(outbox).start()
    t.after(() => relay.close())

    const calls = []
    const handler = async (message, tx) => {
      calls.push(message.id)
      await lib.insert(tx, handled, message.id)
      if (message.json().fail) throw new Error('handler failed after its write')
    }
    const options = { group, maxRetries: 2, retryDelay: 10, retryDelayMax: 20, pollInterval: 50 }
    const first = lib.module.consumer(outbox, db, topic, handler, options).start()
    t.after(() => first.close())
    await waitFor('the good message processed and the bad one dead-lettered',
      () => first.stats().processed === 1 && first.stats().deadLettered === 1)
    await first.close()
    assert.deepEqual(first.stats(), { processed: 1, duplicates: 0, retried: 2, deadLettered: 1 })
    assert.equal(calls.filter((id) => id === bad).length, 3, 'the first attempt and two retries')
    await withPg(async (client) => {
      const { rows } = await client.query(`SELECT id FROM ${handled}`)
      assert.deepEqual(rows.map((r) => r.id), [good], 'the failing handler\'s writes rolled back')
    })
    const letters = await outbox.deadLetters()
    assert.deepEqual(letters.map((l) => l.message.id), [bad])
    assert.match(letters[0].lastError, /handler failed after its write/)

    // Delivered again from the start of the log: the inbox row skips it.
    await withPg((client) => client.query(`DELETE FROM ${prefix}positions WHERE consumer_group = $1`, [group]))
    calls.length = 0
    const again = lib.module.consumer(outbox, db, topic, handler, options).start()
    t.after(() => again.close())
    await waitFor('the processed message delivered again and skipped', () => again.stats().duplicates >= 1)
    await again.close()
    assert.ok(!calls.includes(good), 'the handler was not called for the processed message')
    assert.equal(await count(handled, `WHERE id = '${good}'`), 1)
  })
}

test('typeorm: a QueryRunner in a transaction writes the event with it; after its rollback it is refused', async (t) => {
  const { outbox, prefix } = await openOutbox(t)
  const dataSource = await connect(t, LIBRARIES.typeorm, pgUrl())
  const { enqueue } = require('../lib/typeorm')
  const runner = dataSource.createQueryRunner()
  t.after(() => runner.release())
  await runner.startTransaction()
  await enqueue(outbox, runner, { topic: 'runner', payload: 1 })
  await withPg(async (client) => {
    const { rows } = await client.query(`SELECT count(*)::int AS n FROM ${prefix}outbox`)
    assert.equal(rows[0].n, 0, 'not visible before the commit')
  })
  await runner.rollbackTransaction()
  assert.equal(await count(`${prefix}outbox`), 0)
  await assert.rejects(enqueue(outbox, runner, { topic: 'runner', payload: 2 }), relaybox.ClosedError)
  await runner.startTransaction()
  const id = await enqueue(outbox, runner, { topic: 'runner', payload: 3 })
  await runner.commitTransaction()
  assert.equal(await count(`${prefix}outbox`, `WHERE id = '${id}'`), 1)
})

test('an integration refuses an outbox on SQLite', async (t) => {
  const knex = knexFactory({ client: 'pg', connection: pgUrl(), pool: { min: 0, max: 1 } })
  t.after(() => knex.destroy())
  const outbox = await relaybox.Outbox.open('sqlite::memory:', { migrate: true })
  t.after(() => outbox.close())
  await assert.rejects(knex.transaction((trx) => require('../lib/knex').enqueue(outbox, trx, { topic: 't', payload: 1 })),
    (err) => err instanceof relaybox.ConfigError && /PostgreSQL outbox/.test(err.message))
})

/** Runs `script` in a child Node process; resolves with its exit signal and output. */
function runChild (script, env) {
  const { spawn } = require('node:child_process')
  const path = require('node:path')
  return new Promise((resolve) => {
    const child = spawn(process.execPath, ['-e', script], {
      env: { ...process.env, ...env, PACKAGE: path.join(__dirname, '..') },
      stdio: ['ignore', 'pipe', 'pipe']
    })
    let output = ''
    child.stdout.on('data', (d) => { output += d })
    child.stderr.on('data', (d) => { output += d })
    const timer = setTimeout(() => child.kill('SIGTERM'), 30000)
    child.on('exit', (code, signal) => {
      clearTimeout(timer)
      resolve({ code, signal, output })
    })
  })
}

// The consumer process dies (SIGKILL) as soon as Knex's transaction has
// committed, before the outcome reaches the core: the delivery was never
// acknowledged.
const KILLED_CONSUMER = `
const path = require('node:path')
const { Outbox } = require(process.env.PACKAGE)
const relayboxKnex = require(path.join(process.env.PACKAGE, 'lib/knex'))
const knex = require('knex')({ client: 'pg', connection: process.env.RELAYBOX_TEST_DATABASE_URL, pool: { min: 0, max: 2 } })
const dying = new Proxy(knex, {
  get: (target, name) => name !== 'transaction'
    ? Reflect.get(target, name)
    : (body) => target.transaction(body).then(() => process.kill(process.pid, 'SIGKILL'))
})
;(async () => {
  const outbox = await Outbox.open(process.env.RELAYBOX_TEST_DATABASE_URL, { tablePrefix: process.env.PREFIX })
  relayboxKnex.consumer(outbox, dying, process.env.TOPIC, async (message, trx) => {
    await trx(process.env.TABLE).insert({ id: message.id })
  }, { group: process.env.GROUP, pollInterval: 50 }).start()
})()
`

test('knex: a consumer killed after its commit, before the acknowledgement: the redelivery is skipped', async (t) => {
  const { outbox, prefix } = await openOutbox(t)
  const handled = `${prefix}handled`
  await withPg((client) => client.query(`CREATE TABLE ${handled} (id text PRIMARY KEY)`))
  const topic = unique('killed')
  const group = 'killed'
  const id = await outbox.enqueue({ topic, payload: { n: 1 } })
  const relay = new relaybox.Relay(outbox).start()
  t.after(() => relay.close())

  const { signal, output } = await runChild(KILLED_CONSUMER, { PREFIX: prefix, TOPIC: topic, GROUP: group, TABLE: handled })
  assert.equal(signal, 'SIGKILL', `the consumer process was not killed at its commit:\n${output}`)
  assert.equal(await count(handled), 1, 'the handler\'s write committed before the process died')

  const knex = knexFactory({ client: 'pg', connection: pgUrl(), pool: { min: 0, max: 2 } })
  t.after(() => knex.destroy())
  const calls = []
  const again = require('../lib/knex').consumer(outbox, knex, topic, async (message, trx) => {
    calls.push(message.id)
    await trx(handled).insert({ id: message.id })
  }, { group, pollInterval: 50 }).start()
  t.after(() => again.close())
  await waitFor('the unacknowledged message delivered again and skipped', () => again.stats().duplicates === 1)
  await again.close()
  assert.deepEqual(calls, [], 'the handler was not called again')
  assert.equal(again.stats().processed, 0)
  assert.equal(await count(handled, `WHERE id = '${id}'`), 1)
})
