// Types of relaybox/lib/kysely: Kysely transactions (PostgreSQL dialect).
import type { Kysely, Transaction } from 'kysely'
import type { Outbox, Consumer, ConsumerOptions, Message, MessageInput } from './relaybox'

/** Writes one message in the Kysely transaction `trx`; resolves with its id. */
export declare function enqueue<DB>(outbox: Outbox, trx: Transaction<DB>, message: MessageInput): Promise<string>
/** Writes many messages in the Kysely transaction `trx`; all or none. Resolves with their ids. */
export declare function enqueueBatch<DB>(outbox: Outbox, trx: Transaction<DB>, messages: MessageInput[]): Promise<string[]>
/** A consumer whose handler receives the `trx` holding the inbox row; call `start()`. */
export declare function consumer<DB>(
  outbox: Outbox,
  db: Kysely<DB>,
  topic: string,
  handler: (message: Message, trx: Transaction<DB>) => Promise<void> | void,
  options: ConsumerOptions
): Consumer
