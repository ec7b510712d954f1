/**
 * relaybox with the application's own database library: the event is
 * written in the library's transaction (atomic with the business rows), and
 * a consumer's handler writes through the library in the transaction that
 * holds the message's inbox row. Type-checked by `tsc --noEmit` in
 * dev/node-test.
 */
import pg from 'pg'
import { Knex } from 'knex'
import { drizzle } from 'drizzle-orm/node-postgres'
import { sql } from 'drizzle-orm'
import { Kysely } from 'kysely'
import { DataSource } from 'typeorm'
import { Outbox, Consumer, Message } from 'relaybox'
import * as viaPg from 'relaybox/lib/pg'
import * as viaKnex from 'relaybox/lib/knex'
import * as viaDrizzle from 'relaybox/lib/drizzle'
import * as viaKysely from 'relaybox/lib/kysely'
import * as viaTypeorm from 'relaybox/lib/typeorm'
import { RelayboxModule } from 'relaybox/lib/nestjs'

interface Database { orders: { id: number } }

export async function withPg (outbox: Outbox, pool: pg.Pool): Promise<string> {
  const client = await pool.connect()
  try {
    await client.query('BEGIN')
    await client.query('INSERT INTO orders (id) VALUES ($1)', [1])
    const id = await viaPg.enqueue(outbox, client, { topic: 'orders', key: '1', payload: { id: 1 } })
    await client.query('COMMIT')
    return id
  } catch (err) {
    await client.query('ROLLBACK')
    throw err
  } finally {
    client.release()
  }
}

export async function withKnex (outbox: Outbox, knex: Knex): Promise<string[]> {
  return knex.transaction(async (trx) => {
    await trx('orders').insert({ id: 2 })
    return viaKnex.enqueueBatch(outbox, trx, [{ topic: 'orders', payload: { id: 2 } }, { topic: 'audit', payload: 'order 2' }])
  })
}

export async function withDrizzle (outbox: Outbox, pool: pg.Pool): Promise<string> {
  const db = drizzle(pool)
  return db.transaction(async (tx) => {
    await tx.execute(sql`INSERT INTO orders (id) VALUES (${3})`)
    return viaDrizzle.enqueue(outbox, tx, { topic: 'orders', payload: { id: 3 } })
  })
}

export async function withKysely (outbox: Outbox, db: Kysely<Database>): Promise<string> {
  return db.transaction().execute(async (trx) => {
    await trx.insertInto('orders').values({ id: 4 }).execute()
    return viaKysely.enqueue(outbox, trx, { topic: 'orders', payload: { id: 4 } })
  })
}

export async function withTypeorm (outbox: Outbox, dataSource: DataSource): Promise<string> {
  return dataSource.transaction(async (manager) => {
    await manager.query('INSERT INTO orders (id) VALUES ($1)', [5])
    return viaTypeorm.enqueue(outbox, manager, { topic: 'orders', payload: { id: 5 } })
  })
}

export function consumers (outbox: Outbox, pool: pg.Pool, knex: Knex, db: Kysely<Database>, dataSource: DataSource): Consumer[] {
  const options = { group: 'billing' }
  return [
    viaPg.consumer(outbox, pool, 'orders', async (message: Message, client: pg.PoolClient) => {
      await client.query('INSERT INTO invoices (order_id) VALUES ($1)', [message.json()])
    }, options),
    viaKnex.consumer(outbox, knex, 'orders', async (message, trx) => {
      await trx('invoices').insert({ message_id: message.id })
    }, options),
    viaDrizzle.consumer(outbox, drizzle(pool), 'orders', async (message, tx) => {
      await tx.execute(sql`INSERT INTO invoices (message_id) VALUES (${message.id})`)
    }, options),
    viaKysely.consumer(outbox, db, 'orders', async (message, trx) => {
      await trx.insertInto('orders').values({ id: Number(message.key) }).execute()
    }, options),
    viaTypeorm.consumer(outbox, dataSource, 'orders', async (message, manager) => {
      await manager.query('INSERT INTO invoices (message_id) VALUES ($1)', [message.id])
    }, options)
  ].map((consumer) => consumer.start())
}

/** The NestJS module's options, typed (used in `@Module({imports: [...]})`). */
export function relayboxModule (dataSource: DataSource) {
  return RelayboxModule.forRootAsync({
    inject: [DataSource],
    useFactory: () => ({
      url: process.env.DATABASE_URL ?? '',
      relay: { pollInterval: 1000 },
      consumers: [
        { topic: 'audit', group: 'audit', handler: async (message: Message) => { console.log(message.id) } },
        (outbox: Outbox) => viaTypeorm.consumer(outbox, dataSource, 'orders', async (message, manager) => {
          await manager.query('INSERT INTO invoices (message_id) VALUES ($1)', [message.id])
        }, { group: 'billing' })
      ]
    })
  })
}
