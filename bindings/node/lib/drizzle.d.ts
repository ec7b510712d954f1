// Types of relaybox/lib/drizzle: Drizzle ORM transactions on PostgreSQL.
import type { PgDatabase, PgTransaction, PgQueryResultHKT } from 'drizzle-orm/pg-core'
import type { Outbox, Consumer, ConsumerOptions, Message, MessageInput } from './relaybox'

/** Any Drizzle transaction on PostgreSQL (node-postgres: `NodePgTransaction`). */
export type DrizzleTransaction = PgTransaction<PgQueryResultHKT, any, any>
/** Any Drizzle database on PostgreSQL (node-postgres: `NodePgDatabase`). */
export type DrizzleDatabase = PgDatabase<PgQueryResultHKT, any, any>

/** Writes one message in the Drizzle transaction `tx`; resolves with its id. */
export declare function enqueue(outbox: Outbox, tx: DrizzleTransaction, message: MessageInput): Promise<string>
/** Writes many messages in the Drizzle transaction `tx`; all or none. Resolves with their ids. */
export declare function enqueueBatch(outbox: Outbox, tx: DrizzleTransaction, messages: MessageInput[]): Promise<string[]>
/** A consumer whose handler receives the `tx` holding the inbox row; call `start()`. */
export declare function consumer<Tx extends DrizzleTransaction = DrizzleTransaction>(
  outbox: Outbox,
  db: DrizzleDatabase,
  topic: string,
  handler: (message: Message, tx: Tx) => Promise<void> | void,
  options: ConsumerOptions
): Consumer
