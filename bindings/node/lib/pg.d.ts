// Types of relaybox/lib/pg: node-postgres transactions.
import type { Pool, PoolClient, Client } from 'pg'
import type { Outbox, Consumer, ConsumerOptions, Message, MessageInput } from './relaybox'

/** Writes one message in the transaction open on `client` (after `BEGIN`); resolves with its id. */
export declare function enqueue(outbox: Outbox, client: PoolClient | Client, message: MessageInput): Promise<string>
/** Writes many messages in the transaction open on `client`; all or none. Resolves with their ids. */
export declare function enqueueBatch(outbox: Outbox, client: PoolClient | Client, messages: MessageInput[]): Promise<string[]>
/** A consumer whose handler receives the `PoolClient` of the transaction holding the inbox row; call `start()`. */
export declare function consumer(
  outbox: Outbox,
  pool: Pool,
  topic: string,
  handler: (message: Message, client: PoolClient) => Promise<void> | void,
  options: ConsumerOptions
): Consumer
