'use strict'
/**
 * Node binding benchmark: enqueue from Node (single and batched) next to the
 * same workload run by the Rust core alone, and the ratio; then consumer
 * throughput with an async handler. Run it with `bindings/node/bench/run`
 * (release build). Prints figures; asserts nothing.
 */

const { execFile } = require('node:child_process')
const { randomUUID } = require('node:crypto')
const path = require('node:path')
const { promisify } = require('node:util')
const pg = require('pg')

const relaybox = require('..')

const PAYLOAD = Buffer.alloc(256, 'x')
const TASKS = 4

/**
 * The same enqueue workload run by the Rust core alone; resolves with the
 * seconds taken. Runs `relaybox-bench enqueue-peer` (the repository's
 * benchmark program, crate `bench/`, which `bindings/node/bench/run` builds)
 * on the tables of `prefix`, with the pool this benchmark's outbox has.
 * `RELAYBOX_BENCH_BIN` names the program; the default is the release build
 * in the repository's cargo target directory.
 */
async function rustEnqueue (url, prefix, total, perTx) {
  const root = path.resolve(__dirname, '../../..')
  const target = process.env.CARGO_TARGET_DIR || path.join(root, 'target')
  const program = process.env.RELAYBOX_BENCH_BIN || path.join(target, 'release', 'relaybox-bench')
  const { stdout } = await promisify(execFile)(program, [
    'enqueue-peer', '--url', url, '--prefix', prefix, '--total', String(total), '--per-tx', String(perTx),
    '--tasks', String(TASKS), '--payload', String(PAYLOAD.length), '--max-connections', String(TASKS + 2)
  ])
  return JSON.parse(stdout).seconds
}

/** Enqueues `total` messages from `TASKS` concurrent async tasks; resolves with the seconds taken. */
async function nodeEnqueue (outbox, total, perTx) {
  const perTask = Math.floor(total / TASKS)
  const work = async (task) => {
    let written = 0
    while (written < perTask) {
      const n = Math.min(perTx, perTask - written)
      await outbox.transaction(async (tx) => {
        if (n === 1) {
          await tx.enqueue({ topic: 'bench', payload: PAYLOAD, key: `k${(task * perTask + written) % 64}` })
        } else {
          const batch = []
          for (let i = 0; i < n; i++) batch.push({ topic: 'bench', payload: PAYLOAD, key: `k${(task * perTask + written + i) % 64}` })
          await tx.enqueueBatch(batch)
        }
      })
      written += n
    }
  }
  const started = performance.now()
  await Promise.all(Array.from({ length: TASKS }, (_, task) => work(task)))
  return (performance.now() - started) / 1000
}

async function sql (url, statements) {
  const client = new pg.Client({ connectionString: url })
  await client.connect()
  try {
    const results = []
    for (const statement of statements) results.push(await client.query(statement))
    return results
  } finally {
    await client.end()
  }
}

/** Empties the outbox between runs. */
function reset (url, prefix) {
  return sql(url, [`TRUNCATE ${prefix}outbox`, 'CHECKPOINT'])
}

/** Drops the benchmark's tables. */
async function drop (url, prefix) {
  const [{ rows }] = await sql(url, [`SELECT tablename FROM pg_tables WHERE tablename LIKE '${prefix}%'`])
  await sql(url, rows.map((r) => `DROP TABLE "${r.tablename}" CASCADE`))
}

/** Relays `n` messages, then times a consumer with an async handler; resolves with msg/s. */
async function consumerThroughput (outbox, n) {
  const topic = `bench-${randomUUID().slice(0, 6)}`
  await outbox.transaction(async (tx) => {
    for (let start = 0; start < n; start += 1000) {
      const batch = []
      for (let i = start; i < Math.min(n, start + 1000); i++) batch.push({ topic, payload: PAYLOAD, key: `k${i % 64}` })
      await tx.enqueueBatch(batch)
    }
  })
  const relay = new relaybox.Relay(outbox).start()
  while (relay.stats().delivered < n) await new Promise((resolve) => setTimeout(resolve, 50))
  await relay.close()
  let handled = 0
  let finished
  const done = new Promise((resolve) => { finished = resolve })
  const started = performance.now()
  const consumer = new relaybox.Consumer(outbox, topic, async () => {
    handled += 1
    if (handled === n) finished()
  }, { group: 'bench', batchSize: 500 }).start()
  await done
  const elapsed = (performance.now() - started) / 1000
  await consumer.close()
  return n / elapsed
}

const rate = (n) => `${Math.round(n).toLocaleString('en-US')}/s`

async function main () {
  const url = process.env.RELAYBOX_TEST_DATABASE_URL
  if (!url) {
    console.error('RELAYBOX_TEST_DATABASE_URL is not set (bindings/node/bench/run sets it)')
    return 2
  }
  const quick = process.argv.includes('--quick')
  const prefix = `ndbench_${randomUUID().slice(0, 6)}_`
  const outbox = await relaybox.Outbox.open(url, { migrate: true, tablePrefix: prefix, maxConnections: TASKS + 2 })
  try {
    const singleN = quick ? 2000 : 5000
    const batchN = quick ? 20000 : 100000
    console.log(`relaybox Node binding benchmark (${TASKS} concurrent tasks, 256-byte payloads)`)
    console.log(`${'enqueue'.padEnd(34)} ${'Node'.padStart(12)} ${'Rust'.padStart(12)} ${'Node/Rust'.padStart(12)}`)
    const ratios = {}
    for (const [label, total, perTx] of [['1 msg/tx', singleN, 1], ['100 msg/tx (enqueueBatch)', batchN, 100]]) {
      await reset(url, prefix)
      const rust = total / await rustEnqueue(url, prefix, total, perTx)
      await reset(url, prefix)
      const node = total / await nodeEnqueue(outbox, total, perTx)
      ratios[label] = node / rust
      console.log(`${label.padEnd(34)} ${rate(node).padStart(12)} ${rate(rust).padStart(12)} ${`${Math.round(100 * node / rust)}%`.padStart(12)}`)
    }
    const overhead = 1 - ratios['100 msg/tx (enqueueBatch)']
    console.log(`batched enqueue overhead of the binding: ${Math.round(overhead * 100)}% (target <= 20%: ${overhead <= 0.2 ? 'met' : 'missed'})`)
    await reset(url, prefix)
    const n = quick ? 5000 : 20000
    console.log(`consumer, async handler, ${n} msgs: ${rate(await consumerThroughput(outbox, n)).replace('/s', ' msg/s')}`)
  } finally {
    await outbox.close()
    await drop(url, prefix)
  }
  return 0
}

main().then((code) => { process.exitCode = code }, (err) => { console.error(err); process.exitCode = 1 })
