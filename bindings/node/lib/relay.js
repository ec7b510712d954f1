'use strict'
/**
 * The relay: moves committed outbox rows to the broker.
 * @module relaybox/relay
 */

const { native, settle, sync } = require('./native')
const { coreOptions, stringify, transportJson } = require('./values')

/**
 * A timer that keeps Node's event loop alive while a relay or consumer runs,
 * as a server socket would; released by `close()`.
 */
function keepAlive () {
  return setInterval(() => {}, 2 ** 31 - 1)
}

/**
 * Relays an outbox to a transport: in order per key, at least once, with
 * retries and dead letters. `start()` it; `close()` finishes the batch in
 * flight and hands its partitions over.
 */
class Relay {
  #outbox
  #transport
  #config
  #native = null
  #timer = null

  /**
   * @param {import('./outbox').Outbox} outbox
   * @param {import('./relaybox').RelayOptions} [options]
   */
  constructor (outbox, options = {}) {
    const { transport, ...settings } = options
    this.#outbox = outbox
    this.#transport = transportJson(transport)
    this.#config = stringify(coreOptions(settings, 'Relay options'), 'invalid_config')
  }

  /**
   * Starts relaying (settings are validated here).
   * @returns {this}
   */
  start () {
    if (this.#native !== null && this.#native.running) return this
    this.#native = sync(() => native.NativeRelay.start(this.#outbox._native, this.#transport, this.#config))
    this.#timer = keepAlive()
    return this
  }

  /** Whether it is running. */
  get running () {
    return this.#native !== null && this.#native.running
  }

  /** This relay's instance id (the lease owner), once started. */
  get owner () {
    return this.#native === null ? null : this.#native.owner
  }

  /**
   * Counters: delivered, retried, deadLettered, batches, claims, partitionsHeld.
   * @returns {import('./relaybox').RelayStats}
   */
  stats () {
    if (this.#native === null) {
      return { delivered: 0, retried: 0, deadLettered: 0, batches: 0, claims: 0, partitionsHeld: 0 }
    }
    return this.#native.stats()
  }

  /** Finishes the batch in flight, hands its partitions over and stops. */
  async close () {
    if (this.#native === null) return
    const relay = this.#native
    try {
      await settle(() => relay.shutdown())
    } finally {
      clearInterval(this.#timer)
      this.#timer = null
    }
  }
}

module.exports = { Relay, keepAlive }
