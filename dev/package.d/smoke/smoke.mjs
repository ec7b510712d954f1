// dev/package's Node program: the installed relaybox package, end to end on SQLite.
//
// Run inside a fresh npm project that installed the packed relaybox tarball,
// with no Rust toolchain on PATH. It opens a SQLite outbox in a temporary
// directory, enqueues one message, relays it over the database transport,
// consumes it once, then relays and consumes a second message to show that
// the first is not handled again. It prints
//
//   smoke: delivered=1 handled=1 startup_ms=<n>
//
// where startup_ms is the time from loading relaybox to the first enqueue
// returning, and exits 0; any failure exits non-zero with a message.
import { createRequire } from 'node:module'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { performance } from 'node:perf_hooks'
import { setTimeout as sleep } from 'node:timers/promises'

const DEADLINE_MS = 30_000

const require = createRequire(join(process.cwd(), 'package.json'))
const t0 = performance.now()
const { Outbox, Relay, Consumer } = require('relaybox')

async function waitFor (what, done) {
  const deadline = performance.now() + DEADLINE_MS
  while (!done()) {
    if (performance.now() > deadline) {
      throw new Error(`${what} did not happen within ${DEADLINE_MS / 1000} s`)
    }
    await sleep(20)
  }
}

async function relayOnce (outbox, what) {
  const relay = new Relay(outbox, { pollInterval: 50 }).start()
  try {
    await waitFor(what, () => relay.stats().delivered >= 1)
  } finally {
    await relay.close()
  }
  return relay.stats().delivered
}

async function consumeUntil (outbox, handle, what, done) {
  const consumer = new Consumer(outbox, 'orders', handle, { group: 'smoke', pollInterval: 50 }).start()
  try {
    await waitFor(what, done)
  } finally {
    await consumer.close()
  }
}

async function main () {
  const dir = mkdtempSync(join(tmpdir(), 'relaybox-smoke-'))
  try {
    const outbox = await Outbox.open(`sqlite://${join(dir, 'smoke.db')}?mode=rwc`, { migrate: true })
    const first = await outbox.enqueue({ topic: 'orders', key: '1', type: 'OrderPlaced', payload: { id: 1 } })
    const startupMs = performance.now() - t0

    const handled = new Map()
    const handle = (message) => { handled.set(message.id, (handled.get(message.id) ?? 0) + 1) }

    const delivered = await relayOnce(outbox, 'relaying the message')
    if (delivered !== 1) throw new Error(`the relay delivered ${delivered} messages, not 1`)
    await consumeUntil(outbox, handle, 'handling the message', () => handled.has(first))

    // A second message, relayed and consumed by the same group: once it is
    // handled, the consumer has read past the first one again or not at all.
    const second = await outbox.enqueue({ topic: 'orders', key: '2', type: 'OrderPlaced', payload: { id: 2 } })
    await relayOnce(outbox, 'relaying the second message')
    await consumeUntil(outbox, handle, 'handling the second message', () => handled.has(second))
    await outbox.close()

    if (handled.get(first) !== 1) throw new Error(`the first message was handled ${handled.get(first)} times`)
    if (handled.get(second) !== 1 || handled.size !== 2) {
      throw new Error(`unexpected handler calls ${JSON.stringify([...handled])}`)
    }
    console.log(`smoke: delivered=${delivered} handled=${handled.get(first)} startup_ms=${startupMs.toFixed(1)}`)
  } finally {
    rmSync(dir, { recursive: true, force: true })
  }
}

main().catch((err) => {
  console.error(`smoke: FAILED: ${err && err.stack ? err.stack : err}`)
  process.exit(1)
})
