// Types of relaybox/lib/knex: Knex transactions (PostgreSQL client).
import type { Knex } from 'knex'
import type { Outbox, Consumer, ConsumerOptions, Message, MessageInput } from './relaybox'

/** Writes one message in the Knex transaction `trx`; resolves with its id. */
export declare function enqueue(outbox: Outbox, trx: Knex.Transaction, message: MessageInput): Promise<string>
/** Writes many messages in the Knex transaction `trx`; all or none. Resolves with their ids. */
export declare function enqueueBatch(outbox: Outbox, trx: Knex.Transaction, messages: MessageInput[]): Promise<string[]>
/** A consumer whose handler receives the `trx` holding the inbox row; call `start()`. */
export declare function consumer(
  outbox: Outbox,
  knex: Knex,
  topic: string,
  handler: (message: Message, trx: Knex.Transaction) => Promise<void> | void,
  options: ConsumerOptions
): Consumer
