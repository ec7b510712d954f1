// Types of relaybox/lib/typeorm: TypeORM transactions (postgres driver).
import type { DataSource, EntityManager, QueryRunner } from 'typeorm'
import type { Outbox, Consumer, ConsumerOptions, Message, MessageInput } from './relaybox'

/** Writes one message in the transaction of `manager` (a transaction's EntityManager, or a QueryRunner after `startTransaction()`); resolves with its id. */
export declare function enqueue(outbox: Outbox, manager: EntityManager | QueryRunner, message: MessageInput): Promise<string>
/** Writes many messages in the transaction of `manager`; all or none. Resolves with their ids. */
export declare function enqueueBatch(outbox: Outbox, manager: EntityManager | QueryRunner, messages: MessageInput[]): Promise<string[]>
/** A consumer whose handler receives the `EntityManager` of the transaction holding the inbox row; call `start()`. */
export declare function consumer(
  outbox: Outbox,
  dataSource: DataSource,
  topic: string,
  handler: (message: Message, manager: EntityManager) => Promise<void> | void,
  options: ConsumerOptions
): Consumer
