'use strict'
/**
 * The log records of the relaybox core (relays, consumers, their broker
 * clients) delivered to JavaScript.
 *
 * By default warnings and errors are written with `console.warn` and
 * `console.error`. `setLogger(fn, { level })` sends every record at `level`
 * and above to `fn` instead; `setLogger(null)` turns forwarding off. There
 * is one logger per process, called on the thread that set it (the main
 * thread, unless a worker thread called `setLogger`).
 *
 * The core never waits for JavaScript: records travel through a bounded
 * queue to a native thread that hands them to the JavaScript thread in
 * batches. When the logger does not keep up, further records are dropped
 * and counted, and a warning record `relaybox log records dropped` (field
 * `dropped`) follows.
 * @module relaybox/logging
 */

const { isMainThread } = require('node:worker_threads')

const { native, sync } = require('./native')

const LEVELS = ['error', 'warn', 'info', 'debug', 'trace']

/**
 * Writes a record to the console: errors with `console.error`, the rest
 * with `console.warn`.
 * @param {import('./relaybox').LogRecord} record
 */
function consoleLogger (record) {
  const line = `relaybox ${record.level.toUpperCase()} ${record.target}: ${record.text}`
  if (record.level === 'error') console.error(line)
  else console.warn(line)
}

/** The logger and its level; records queued before a change go to the new logger, filtered by its level. */
const current = { fn: null, rank: -1 }

/**
 * Turns a native JSON batch into records and calls the current logger with
 * each at its level or above; an exception of the logger becomes a process
 * warning instead of an uncaught error.
 * @param {string} json
 */
function receive (json) {
  for (const raw of JSON.parse(json)) {
    const fn = current.fn
    if (fn === null || LEVELS.indexOf(raw.level) > current.rank) continue
    const record = {
      level: raw.level,
      target: raw.target,
      message: raw.message,
      text: raw.text,
      fields: raw.fields,
      file: raw.file ?? null,
      line: raw.line ?? null,
      time: new Date(raw.time),
      thread: raw.thread
    }
    try {
      fn(record)
    } catch (err) {
      process.emitWarning(`relaybox logger threw: ${err && err.stack ? err.stack : err}`)
    }
  }
}

/**
 * Sends the core's log records at `level` (`'error'`, `'warn'`, `'info'`,
 * `'debug'` or `'trace'`; default `'info'`) and above to `fn`, replacing
 * the logger set before (by default, the console at `'warn'`). Records of
 * the core's libraries (librdkafka) pass at `'warn'` and above only.
 * `setLogger(null)` turns forwarding off.
 * @param {((record: import('./relaybox').LogRecord) => void) | null} fn
 * @param {{level?: import('./relaybox').LogLevel}} [options]
 */
function setLogger (fn, options = {}) {
  const level = options.level ?? 'info'
  if (!LEVELS.includes(level)) {
    throw new TypeError(`unknown log level ${JSON.stringify(level)}: use one of ${LEVELS.join(', ')}`)
  }
  if (fn !== null && typeof fn !== 'function') {
    throw new TypeError('setLogger takes a function or null')
  }
  current.fn = fn
  current.rank = LEVELS.indexOf(level)
  sync(() => native.setLogCallback(fn === null ? null : receive, level))
}

/**
 * Counters of the forwarding since the process started: records `queued`
 * for the logger and records `dropped` because it did not keep up.
 * @returns {{queued: number, dropped: number}}
 */
function logStats () {
  return native.logStats()
}

// One logger per process: the main thread's. A worker thread that loads
// relaybox leaves it alone (it may still call `setLogger` to take it over).
if (isMainThread) setLogger(consoleLogger, { level: 'warn' })

module.exports = { setLogger, consoleLogger, logStats }
