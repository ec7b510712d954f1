// Types of relaybox/lib/prisma: Prisma interactive transactions (PostgreSQL).
import type { Outbox, Consumer, ConsumerOptions, Message, MessageInput } from './relaybox'

/** What relaybox uses of a Prisma client: its raw-query API. */
export interface PrismaRaw {
  $queryRawUnsafe<T = unknown>(query: string, ...values: any[]): Promise<T>
}
/** A PrismaClient (it has `$transaction`). */
export interface PrismaClientLike extends PrismaRaw {
  $transaction<R>(fn: (tx: any) => Promise<R>, options?: { timeout?: number }): Promise<R>
}

/** Writes one message in the interactive transaction of `tx`; resolves with its id. */
export declare function enqueue(outbox: Outbox, tx: PrismaRaw, message: MessageInput): Promise<string>
/** Writes many messages in the interactive transaction of `tx`; all or none. Resolves with their ids. */
export declare function enqueueBatch(outbox: Outbox, tx: PrismaRaw, messages: MessageInput[]): Promise<string[]>
/** A consumer whose handler receives the `tx` client holding the inbox row; call `start()`. */
export declare function consumer<Tx = any>(
  outbox: Outbox,
  prisma: PrismaClientLike,
  topic: string,
  handler: (message: Message, tx: Tx) => Promise<void> | void,
  options: ConsumerOptions & { transactionTimeout?: number }
): Consumer
