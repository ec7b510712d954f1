'use strict'
/**
 * relaybox from Node.js, end to end on the database transport: write an
 * order and its event in one transaction, relay it, consume it once, close.
 * The process exits by itself once everything is closed.
 *
 *   RELAYBOX_DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres node examples/node/quickstart.js
 */

const { Outbox, Relay, Consumer } = require('../../bindings/node')

async function main () {
  const url = process.env.RELAYBOX_DATABASE_URL ?? 'sqlite://quickstart.db?mode=rwc'
  const prefix = `quickstart_${process.pid}_`
  const outbox = await Outbox.open(url, { migrate: true, tablePrefix: prefix })
  await outbox.transaction((tx) => tx.execute(`CREATE TABLE ${prefix}orders (id bigint PRIMARY KEY, total bigint)`))

  const id = await outbox.transaction(async (tx) => {
    await tx.execute(`INSERT INTO ${prefix}orders (id, total) VALUES ($1, $2)`, [42, 1999])
    return tx.enqueue({ topic: 'orders', key: '42', type: 'OrderPlaced', payload: { id: 42, total: 1999 } })
  })
  console.log(`enqueued ${id}`)

  const relay = new Relay(outbox).start()
  let received
  const handled = new Promise((resolve) => { received = resolve })
  const consumer = new Consumer(outbox, 'orders', async (message, tx) => {
    const order = message.json()
    await tx.execute(`UPDATE ${prefix}orders SET total = total WHERE id = $1`, [order.id])
    received(message)
  }, { group: 'quickstart' }).start()

  const message = await handled
  console.log(`consumed ${message.type} ${message.id}: ${message.text()}`)

  await consumer.close()
  await relay.close()
  if (outbox.dialect === 'postgres') {
    await outbox.transaction(async (tx) => {
      const tables = await tx.query('SELECT tablename FROM pg_tables WHERE tablename LIKE $1', [`${prefix}%`])
      for (const { tablename } of tables) await tx.execute(`DROP TABLE IF EXISTS "${tablename}" CASCADE`)
    })
  }
  await outbox.close()
  console.log('closed; the process exits by itself')
}

main().catch((err) => {
  console.error(err)
  process.exitCode = 1
})
