'use strict'
/**
 * A NestJS module: `RelayboxModule.forRoot(options)` or
 * `RelayboxModule.forRootAsync({imports, inject, useFactory})` provides the
 * {@link Outbox} (injectable by its class or `RELAYBOX_OUTBOX`), the
 * {@link Relay} (`RELAYBOX_RELAY`, `null` when disabled) and the consumers
 * (`RELAYBOX_CONSUMERS`). The relay and consumers start when the
 * application has bootstrapped; `app.close()` closes the consumers (their
 * messages in flight finished and acknowledged), then the relay, then the
 * outbox, after which nothing of relaybox keeps the process alive.
 *
 * The module is built without decorators, so it works with any NestJS
 * version that accepts dynamic modules; it does not load `@nestjs/*` itself.
 * @module relaybox/nestjs
 */

const { Outbox } = require('./outbox')
const { Relay } = require('./relay')
const { Consumer } = require('./consumer')
const { ConfigError } = require('./errors')

const RELAYBOX_OPTIONS = 'RELAYBOX_OPTIONS'
const RELAYBOX_OUTBOX = 'RELAYBOX_OUTBOX'
const RELAYBOX_RELAY = 'RELAYBOX_RELAY'
const RELAYBOX_CONSUMERS = 'RELAYBOX_CONSUMERS'
const RELAYBOX_LIFECYCLE = 'RELAYBOX_LIFECYCLE'

/**
 * Starts the relay and the consumers on bootstrap and closes everything on
 * shutdown (NestJS calls these hooks on provider instances).
 */
class RelayboxLifecycle {
  /**
   * @param {Outbox} outbox
   * @param {Relay | null} relay
   * @param {Consumer[]} consumers
   */
  constructor (outbox, relay, consumers) {
    this.outbox = outbox
    this.relay = relay
    this.consumers = consumers
    this.closed = false
  }

  /** Starts the relay and the consumers. */
  onApplicationBootstrap () {
    if (this.relay) this.relay.start()
    for (const consumer of this.consumers) consumer.start()
  }

  /** Closes the consumers, the relay and the outbox, in that order (once). */
  async onApplicationShutdown () {
    if (this.closed) return
    this.closed = true
    await Promise.all(this.consumers.map((consumer) => consumer.close()))
    if (this.relay) await this.relay.close()
    await this.outbox.close()
  }
}

/**
 * Builds the consumers of the options: a `{topic, handler, ...consumerOptions}`
 * object is an ordinary consumer; a function `(outbox) => Consumer` makes
 * one of an integration (`require('relaybox/lib/typeorm').consumer(...)`).
 */
function consumersOf (outbox, specs) {
  if (specs === undefined) return []
  if (!Array.isArray(specs)) throw new ConfigError('RelayboxModule: consumers must be an array', { code: 'invalid_config' })
  return specs.map((spec, i) => {
    if (typeof spec === 'function') {
      const consumer = spec(outbox)
      if (!(consumer instanceof Consumer)) {
        throw new ConfigError(`RelayboxModule: consumers[${i}] did not return a Consumer`, { code: 'invalid_config' })
      }
      return consumer
    }
    if (spec === null || typeof spec !== 'object') {
      throw new ConfigError(`RelayboxModule: consumers[${i}] must be {topic, handler, group, ...} or (outbox) => Consumer`,
        { code: 'invalid_config' })
    }
    const { topic, handler, ...options } = spec
    return new Consumer(outbox, topic, handler, options)
  })
}

/** The providers shared by forRoot and forRootAsync, after the options provider. */
function providers () {
  return [
    {
      provide: RELAYBOX_OUTBOX,
      inject: [RELAYBOX_OPTIONS],
      useFactory: async (options) => {
        if (options === null || typeof options !== 'object' || typeof options.url !== 'string') {
          throw new ConfigError('RelayboxModule: options.url (the database URL) is required', { code: 'invalid_config' })
        }
        return Outbox.open(options.url, { migrate: true, ...options.outbox })
      }
    },
    { provide: Outbox, useExisting: RELAYBOX_OUTBOX },
    {
      provide: RELAYBOX_RELAY,
      inject: [RELAYBOX_OPTIONS, RELAYBOX_OUTBOX],
      useFactory: (options, outbox) => options.relay === false ? null : new Relay(outbox, options.relay ?? {})
    },
    {
      provide: RELAYBOX_CONSUMERS,
      inject: [RELAYBOX_OPTIONS, RELAYBOX_OUTBOX],
      useFactory: (options, outbox) => consumersOf(outbox, options.consumers)
    },
    {
      provide: RELAYBOX_LIFECYCLE,
      inject: [RELAYBOX_OUTBOX, RELAYBOX_RELAY, RELAYBOX_CONSUMERS],
      useFactory: (outbox, relay, consumers) => new RelayboxLifecycle(outbox, relay, consumers)
    }
  ]
}

const EXPORTS = [RELAYBOX_OUTBOX, Outbox, RELAYBOX_RELAY, RELAYBOX_CONSUMERS]

/** The NestJS module; global, so the outbox is injectable everywhere. */
class RelayboxModule {
  /**
   * @param {import('./nestjs').RelayboxModuleOptions} options
   * @returns {object} a NestJS dynamic module
   */
  static forRoot (options) {
    return {
      module: RelayboxModule,
      global: true,
      providers: [{ provide: RELAYBOX_OPTIONS, useValue: options }, ...providers()],
      exports: EXPORTS
    }
  }

  /**
   * @param {{imports?: unknown[], inject?: unknown[], useFactory: (...args: any[]) => Promise<object> | object}} options
   * @returns {object} a NestJS dynamic module
   */
  static forRootAsync (options) {
    if (options === null || typeof options !== 'object' || typeof options.useFactory !== 'function') {
      throw new ConfigError('RelayboxModule.forRootAsync needs {useFactory, inject?, imports?}', { code: 'invalid_config' })
    }
    return {
      module: RelayboxModule,
      global: true,
      imports: options.imports ?? [],
      providers: [
        { provide: RELAYBOX_OPTIONS, inject: options.inject ?? [], useFactory: options.useFactory },
        ...providers()
      ],
      exports: EXPORTS
    }
  }
}

module.exports = { RelayboxModule, RELAYBOX_OUTBOX, RELAYBOX_RELAY, RELAYBOX_CONSUMERS }
