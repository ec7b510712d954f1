/**
 * relaybox in TypeScript: the core API and the events façade with a zod
 * schema. Type-checked by `tsc --noEmit` in dev/node-test; run it with a
 * TypeScript runner of your choice against RELAYBOX_DATABASE_URL.
 */
import { z } from 'zod'
import pg from 'pg'
import {
  Outbox, Relay, Consumer, Message, Transaction, RelayboxError, ValidationError, Reject,
  createMessaging, kafka, type MessageInput, type ConsumerStats
} from 'relaybox'

const Order = z.object({ id: z.number(), total: z.number() })
type Order = z.infer<typeof Order>

export async function placeOrder (outbox: Outbox, order: Order): Promise<string> {
  const event: MessageInput = { topic: 'orders', key: String(order.id), type: 'OrderPlaced', payload: order }
  return outbox.transaction(async (tx: Transaction) => {
    await tx.execute('INSERT INTO orders (id, total) VALUES ($1, $2)', [order.id, order.total])
    return tx.enqueue(event)
  })
}

export async function placeOrderWithPg (outbox: Outbox, client: pg.PoolClient, order: Order): Promise<string> {
  await client.query('BEGIN')
  try {
    await client.query('INSERT INTO orders (id, total) VALUES ($1, $2)', [order.id, order.total])
    const id = await outbox.enqueueWith(client, { topic: 'orders', key: String(order.id), payload: order })
    await client.query('COMMIT')
    return id
  } catch (err) {
    await client.query('ROLLBACK')
    throw err
  }
}

export async function main (url: string): Promise<ConsumerStats> {
  const outbox = await Outbox.open(url, { migrate: true, maxConnections: 4 })
  const relay = new Relay(outbox, { transport: kafka({ createTopics: true }), batchSize: 100 }).start()
  const consumer = new Consumer(outbox, 'orders', async (message: Message, tx: Transaction) => {
    const order = Order.safeParse(message.json())
    if (!order.success) throw new Reject(order.error.message)
    await tx.execute('UPDATE orders SET shipped = true WHERE id = $1', [order.data.id])
  }, { group: 'shipping', transport: kafka(), maxRetries: 5, retryDelay: '500ms' }).start()

  try {
    await placeOrder(outbox, { id: 1, total: 10 })
  } catch (err) {
    if (err instanceof ValidationError) console.error(`invalid order event (${err.code})`)
    else if (err instanceof RelayboxError && err.retryable) console.error('try again later')
    else throw err
  }

  const messaging = createMessaging({ broker: 'database', outbox, source: 'shop' })
  messaging.onEvent('order.shipped', async (order, { event, tx }) => {
    const total: number = order.total
    await tx.execute('INSERT INTO invoices (order_id, total, event_id) VALUES ($1, $2, $3)', [order.id, total, event.id])
  }, { schema: Order, maxRetries: 3, retryDelay: 1000 })
  await messaging.start()
  await messaging.publishEvent('order.shipped', { id: 1, total: 10 }, { key: 1 })

  const stats = consumer.stats()
  await messaging.close()
  await consumer.close()
  await relay.close()
  await outbox.close()
  return stats
}
