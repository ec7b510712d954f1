@file:JvmName("Relaybox")

package io.relaybox

import kotlinx.coroutines.CancellationException

/**
 * Runs [block] in a new transaction of this outbox and commits it; if [block]
 * throws, rolls the transaction back and rethrows. The events enqueued in
 * [block] exist exactly when its business writes do.
 */
suspend fun <T> Outbox.transaction(block: suspend (Transaction) -> T): T =
    begin().use { tx ->
        val result =
            try {
                block(tx)
            } catch (e: Throwable) {
                tx.rollback()
                throw e
            }
        tx.commit()
        result
    }

/** The body of a blocking transaction; may throw any exception (checked ones too, from Java). */
fun interface TransactionBlock<T> {
    /** Runs in the open transaction [tx]. */
    @Throws(Exception::class)
    fun run(tx: Transaction): T
}

/**
 * [transaction] for Java and other blocking callers: runs [block] in a new
 * transaction, commits it, or rolls it back if [block] throws.
 */
@Throws(Exception::class)
fun <T> Outbox.transactionBlocking(block: TransactionBlock<T>): T =
    beginBlocking().use { tx ->
        val result =
            try {
                block.run(tx)
            } catch (e: Throwable) {
                tx.rollbackBlocking()
                throw e
            }
        tx.commitBlocking()
        result
    }

/** A message handler as a lambda (Kotlin) or lambda (Java); may throw any exception. */
fun interface HandlerFunction {
    /** Handles [message] in the consumer's transaction [tx]. */
    @Throws(Exception::class)
    fun handle(
        message: Message,
        tx: Transaction,
    )
}

/**
 * A [MessageHandler] from a function. It runs on a thread of its own and may
 * block: use the `...Blocking` calls of the transaction. An exception fails
 * the attempt (the message is retried, then dead-lettered) and is recorded as
 * `ExceptionClass: message`; [RelayboxException.Rejected] dead-letters the
 * message at once. Errors that are not exceptions (an `AssertionError`, ...)
 * fail the attempt too, as [RelayboxException.Internal].
 */
fun messageHandler(block: HandlerFunction): MessageHandler =
    object : MessageHandler {
        override fun handle(
            message: Message,
            tx: Transaction,
        ) {
            try {
                Tracing.process(message) { block.handle(message, tx) }
            } catch (e: RelayboxException) {
                throw e
            } catch (e: Exception) {
                throw RelayboxException.Handler(describe(e), false, message.id)
            } catch (e: Throwable) {
                throw RelayboxException.Internal(describe(e), false, message.id)
            }
        }
    }

/**
 * A [SuspendMessageHandler] from a `suspend` function, for
 * [Consumer.startSuspending]. It runs on a coroutine of `Dispatchers.Default`:
 * use the suspending calls of the transaction and never block. Exceptions
 * mean what they mean for [messageHandler].
 */
fun suspendHandler(block: suspend (Message, Transaction) -> Unit): SuspendMessageHandler =
    object : SuspendMessageHandler {
        override suspend fun handle(
            message: Message,
            tx: Transaction,
        ) {
            try {
                Tracing.processSuspending(message) { block(message, tx) }
            } catch (e: RelayboxException) {
                throw e
            } catch (e: CancellationException) {
                throw e
            } catch (e: Exception) {
                throw RelayboxException.Handler(describe(e), false, message.id)
            } catch (e: Throwable) {
                throw RelayboxException.Internal(describe(e), false, message.id)
            }
        }
    }

/** The body of a host handler: runs one delivery and says how it ended. */
fun interface HostBody {
    /** Runs the inbox statement [inbox] and the handler of [message] in one transaction. */
    @Throws(Exception::class)
    fun run(
        message: Message,
        inbox: HostStatement,
    ): HostResult
}

/**
 * A [HostMessageHandler] from [body]: an exception thrown by [body] (after
 * it rolled its transaction back) fails the attempt, recorded as
 * `ExceptionClass: message`; [RelayboxException.Rejected] dead-letters the
 * message at once.
 */
fun hostHandler(body: HostBody): HostMessageHandler =
    object : HostMessageHandler {
        override fun handle(
            message: Message,
            inbox: HostStatement,
        ): HostResult =
            try {
                Tracing.process(message) { body.run(message, inbox) }
            } catch (e: RelayboxException.Rejected) {
                HostResult.Rejected(e.reason)
            } catch (e: Throwable) {
                HostResult.Failed(describe(e))
            }
    }

private fun describe(e: Throwable): String = if (e.message.isNullOrEmpty()) e.javaClass.name else "${e.javaClass.name}: ${e.message}"

/** A message whose payload is the JSON document [json] (`application/json`). */
@JvmOverloads
fun jsonMessage(
    topic: String,
    json: String,
    key: String? = null,
    type: String? = null,
): MessageSpec = MessageSpec(topic = topic, key = key, eventType = type, payloadJson = json).withTraceContext()

/** A message whose payload is [text] (`text/plain; charset=utf-8`). */
@JvmOverloads
fun textMessage(
    topic: String,
    text: String,
    key: String? = null,
    type: String? = null,
): MessageSpec = MessageSpec(topic = topic, key = key, eventType = type, payloadText = text).withTraceContext()

/** The payload decoded as UTF-8 text. */
fun Message.text(): String = payload.decodeToString()

/** The value of column [column], or `null` when the row has no such column. */
operator fun Row.get(column: String): SqlValue? = columns.indexOf(column).takeIf { it >= 0 }?.let { values[it] }

/**
 * The stable code of this error, as every relaybox binding reports it:
 * `invalid_topic`, `database`, `handler`, ... (`rejected` for [RelayboxException.Rejected]).
 */
val RelayboxException.code: String
    get() =
        when (this) {
            is RelayboxException.InvalidTopic -> "invalid_topic"
            is RelayboxException.PayloadTooLarge -> "payload_too_large"
            is RelayboxException.InvalidHeader -> "invalid_header"
            is RelayboxException.InvalidMessage -> "invalid_message"
            is RelayboxException.InvalidConfig -> "invalid_config"
            is RelayboxException.InvalidValue -> "invalid_value"
            is RelayboxException.Closed -> "closed"
            is RelayboxException.Schema -> "schema"
            is RelayboxException.Database -> "database"
            is RelayboxException.Transport -> "transport"
            is RelayboxException.Handler -> "handler"
            is RelayboxException.Timeout -> "timeout"
            is RelayboxException.NotFound -> "not_found"
            is RelayboxException.Internal -> "internal"
            is RelayboxException.Rejected -> "rejected"
        }

/** Transport settings as the JSON that [Relay.start] and [Consumer.start] take. */
object Transports {
    /** The store's own log table: no broker. */
    @JvmStatic
    fun database(): String = "database"

    /**
     * Apache Kafka at [bootstrapServers]; [createTopics] creates missing topics;
     * [transactionalId] publishes exactly once in Kafka transactions (docs/kafka.md,
     * "Exactly once").
     */
    @JvmStatic
    @JvmOverloads
    fun kafka(
        bootstrapServers: String,
        createTopics: Boolean = false,
        transactionalId: String? = null,
    ): String {
        val eos = transactionalId?.let { ",\"transactional_id\":${jsonString(it)}" } ?: ""
        return """{"kafka":{"bootstrap_servers":${jsonString(bootstrapServers)},"create_topics":$createTopics$eos}}"""
    }

    private fun jsonString(value: String): String =
        buildString {
            append('"')
            for (c in value) {
                when {
                    c == '"' -> append("\\\"")
                    c == '\\' -> append("\\\\")
                    c < ' ' -> append("\\u%04x".format(c.code))
                    else -> append(c)
                }
            }
            append('"')
        }
}
