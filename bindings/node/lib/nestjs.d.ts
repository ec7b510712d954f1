// Types of relaybox/lib/nestjs: the NestJS module.
import type { Outbox, Consumer, ConsumerOptions, OutboxOptions, RelayOptions, Handler } from './relaybox'

/** An ordinary consumer, or a function making one of an integration (`relaybox/lib/typeorm`...). */
export type ConsumerSpec =
  | ({ topic: string, handler: Handler } & ConsumerOptions)
  | ((outbox: Outbox) => Consumer)

/** Options of RelayboxModule.forRoot. */
export interface RelayboxModuleOptions {
  /** The database URL of the outbox. */
  url: string
  /** Outbox options (`migrate` defaults to true here). */
  outbox?: OutboxOptions
  /** Relay options, or `false` for no relay in this application. */
  relay?: RelayOptions | false
  /** Consumers started on bootstrap and closed on shutdown. */
  consumers?: ConsumerSpec[]
}

/** Options of RelayboxModule.forRootAsync. */
export interface RelayboxModuleAsyncOptions {
  imports?: any[]
  inject?: any[]
  useFactory: (...args: any[]) => Promise<RelayboxModuleOptions> | RelayboxModuleOptions
}

/** A NestJS dynamic module (structurally `DynamicModule` of `@nestjs/common`). */
export interface RelayboxDynamicModule {
  module: typeof RelayboxModule
  global: boolean
  imports?: any[]
  providers: any[]
  exports: any[]
}

/** Provides the outbox, the relay and the consumers, started on bootstrap and closed by `app.close()`. */
export declare class RelayboxModule {
  static forRoot(options: RelayboxModuleOptions): RelayboxDynamicModule
  static forRootAsync(options: RelayboxModuleAsyncOptions): RelayboxDynamicModule
}

/** Injection token of the Outbox (the Outbox class is a token too). */
export declare const RELAYBOX_OUTBOX: 'RELAYBOX_OUTBOX'
/** Injection token of the Relay (`null` when `relay: false`). */
export declare const RELAYBOX_RELAY: 'RELAYBOX_RELAY'
/** Injection token of the array of consumers. */
export declare const RELAYBOX_CONSUMERS: 'RELAYBOX_CONSUMERS'
