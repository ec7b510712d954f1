'use strict'
// The NestJS module in a real NestJS application context, in a child
// process: the outbox is injected into a service, the relay and a host-mode
// TypeORM consumer start on bootstrap, an order placed through the service's
// transaction is consumed once, and after `app.close()` the process exits by
// itself.
const { test } = require('node:test')
const assert = require('node:assert/strict')
const { spawn } = require('node:child_process')
const path = require('node:path')

const { openOutbox, withPg, count } = require('./helpers')

/** Runs `script` in a child Node process; its exit code (`null`: killed after `limit` ms) and output. */
function run (script, env, limit) {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, ['-e', script], {
      env: { ...process.env, ...env, PACKAGE: path.join(__dirname, '..') },
      stdio: ['ignore', 'pipe', 'pipe']
    })
    let output = ''
    child.stdout.on('data', (d) => { output += d })
    child.stderr.on('data', (d) => { output += d })
    const timer = setTimeout(() => child.kill('SIGKILL'), limit)
    child.on('exit', (code, signal) => {
      clearTimeout(timer)
      resolve({ code: signal === 'SIGKILL' ? null : code, output })
    })
  })
}

const SCRIPT = `
require('reflect-metadata')
const path = require('node:path')
const { Module } = require('@nestjs/common')
const { NestFactory } = require('@nestjs/core')
const { DataSource } = require('typeorm')
const { Outbox } = require(process.env.PACKAGE)
const { RelayboxModule, RELAYBOX_CONSUMERS } = require(path.join(process.env.PACKAGE, 'lib/nestjs'))
const typeormIntegration = require(path.join(process.env.PACKAGE, 'lib/typeorm'))
const url = process.env.RELAYBOX_TEST_DATABASE_URL
const prefix = process.env.PREFIX

let consumed
const done = new Promise((resolve) => { consumed = resolve })

class DatabaseModule {}
Module({
  providers: [
    { provide: DataSource, useFactory: () => new DataSource({ type: 'postgres', url }).initialize() },
    { provide: 'CLOSE_DATA_SOURCE', inject: [DataSource], useFactory: (dataSource) => ({ onApplicationShutdown: () => dataSource.destroy() }) }
  ],
  exports: [DataSource]
})(DatabaseModule)

class AppModule {}
Module({
  imports: [DatabaseModule, RelayboxModule.forRootAsync({
    imports: [DatabaseModule],
    inject: [DataSource],
    useFactory: (dataSource) => ({
      url,
      outbox: { tablePrefix: prefix },
      relay: { pollInterval: 60000 },
      consumers: [(outbox) => typeormIntegration.consumer(outbox, dataSource, 'nest-orders', async (message, manager) => {
        await manager.query('INSERT INTO ' + prefix + 'invoices (order_id) VALUES ($1)', [message.json().id])
        consumed(message.json())
      }, { group: 'nest' })]
    })
  })],
  providers: [
    {
      provide: 'ORDERS',
      inject: [Outbox, DataSource],
      useFactory: (outbox, dataSource) => ({
        place: (id) => dataSource.transaction(async (manager) => {
          await manager.query('INSERT INTO ' + prefix + 'orders (id) VALUES ($1)', [id])
          return typeormIntegration.enqueue(outbox, manager, { topic: 'nest-orders', payload: { id } })
        })
      })
    }
  ]
})(AppModule)

;(async () => {
  const app = await NestFactory.createApplicationContext(AppModule, { logger: false, abortOnError: false })
  console.log('consumers', app.get(RELAYBOX_CONSUMERS).map((c) => c.running).join(','))
  await app.get('ORDERS').place(7)
  console.log('consumed', JSON.stringify(await done))
  await app.close()
  console.log('closed')
})().catch((err) => { console.error(err); process.exit(1) })
`

test('a NestJS application with RelayboxModule consumes an order and exits after app.close()', async (t) => {
  const { prefix } = await openOutbox(t)
  await withPg(async (client) => {
    await client.query(`CREATE TABLE ${prefix}orders (id int8 PRIMARY KEY)`)
    await client.query(`CREATE TABLE ${prefix}invoices (order_id int8 PRIMARY KEY)`)
  })
  const { code, output } = await run(SCRIPT, { PREFIX: prefix }, 30000)
  assert.equal(code, 0, `the application failed (code 1) or did not exit by itself within 30 s (code null):\n${output}`)
  assert.match(output, /consumers true/)
  assert.match(output, /consumed {"id":7}/)
  assert.match(output, /closed/)
  assert.equal(await count(`${prefix}orders`), 1)
  assert.equal(await count(`${prefix}invoices`), 1)
})

test('RelayboxModule refuses options without a database URL', async () => {
  const { RelayboxModule } = require('../lib/nestjs')
  const { Module } = require('@nestjs/common')
  const { NestFactory } = require('@nestjs/core')
  const { ConfigError } = require('..')
  class App {}
  Module({ imports: [RelayboxModule.forRoot({})] })(App)
  await assert.rejects(NestFactory.createApplicationContext(App, { logger: false, abortOnError: false }),
    (err) => err instanceof ConfigError && /options.url/.test(err.message))
  assert.throws(() => RelayboxModule.forRootAsync({}), ConfigError)
})
