@file:JvmName("JsonPayloads")

package io.relaybox

import com.fasterxml.jackson.core.JacksonException
import com.fasterxml.jackson.core.type.TypeReference
import com.fasterxml.jackson.databind.JavaType
import com.fasterxml.jackson.databind.ObjectMapper

/**
 * Typed payloads as JSON, written and read with Jackson's [mapper]: a value
 * (a Kotlin data class, a Java record or bean, a map, ...) becomes the JSON
 * payload of a message (`application/json`), and a message's payload becomes
 * a value of the type asked for.
 *
 * The bytes Jackson writes are the payload, untouched. Jackson
 * (`com.fasterxml.jackson.core:jackson-databind`) is an optional dependency of
 * relaybox: add it to use this class; for Kotlin data classes add
 * `com.fasterxml.jackson.module:jackson-module-kotlin` too, which the
 * default mapper registers when it is on the classpath.
 *
 * From Java: `new JsonCodec()` (or `new JsonCodec(objectMapper)`), then
 * `codec.message("orders", order)`, `codec.decode(message, Order.class)` and
 * `codec.handler(Order.class, (order, message, tx) -> ...)`.
 */
class JsonCodec(
    /** The mapper that writes and reads the payloads. */
    val mapper: ObjectMapper,
) {
    /** A codec with [defaultMapper]. */
    constructor() : this(defaultMapper())

    /**
     * [value] as compact JSON bytes; [RelayboxException.InvalidMessage] when
     * Jackson cannot write it (no serializer for its class, a failing getter, ...).
     */
    @Throws(RelayboxException::class)
    fun encode(value: Any?): ByteArray =
        try {
            mapper.writeValueAsBytes(value)
        } catch (e: JacksonException) {
            val what = value?.javaClass?.name ?: "null"
            throw RelayboxException.InvalidMessage("payload of class $what is not JSON-serialisable: ${e.originalMessage}", false, null)
        }

    /**
     * A message to [topic] whose payload is [value] as JSON
     * (`application/json`), with the optional [key], event [type], [headers]
     * and [idempotencyKey] of [MessageSpec]. Nothing is written until the
     * spec is enqueued; a value Jackson cannot write throws
     * [RelayboxException.InvalidMessage].
     */
    @JvmOverloads
    @Throws(RelayboxException::class)
    fun message(
        topic: String,
        value: Any?,
        key: String? = null,
        type: String? = null,
        headers: Map<String, String> = emptyMap(),
        idempotencyKey: String? = null,
    ): MessageSpec =
        MessageSpec(
            topic = topic,
            key = key,
            eventType = type,
            payloadBytes = encode(value),
            contentType = JSON,
            headers = headers,
            idempotencyKey = idempotencyKey,
        ).withTraceContext()

    /**
     * The payload of [message] read as a [type]; [RelayboxException.InvalidMessage]
     * (with the message's id) when it is not JSON of that shape.
     */
    @Throws(RelayboxException::class)
    fun <T> decode(
        message: Message,
        type: Class<T>,
    ): T = decode(message, mapper.constructType(type))

    /** [decode] for a generic type, e.g. `new TypeReference<List<Order>>() {}`. */
    @Throws(RelayboxException::class)
    fun <T> decode(
        message: Message,
        type: TypeReference<T>,
    ): T = decode(message, mapper.constructType(type))

    /** [decode] for a Jackson [JavaType]. */
    @Throws(RelayboxException::class)
    fun <T> decode(
        message: Message,
        type: JavaType,
    ): T =
        try {
            mapper.readValue(message.payload, type)
        } catch (e: JacksonException) {
            throw RelayboxException.InvalidMessage(
                "payload of message ${message.id} is not a JSON ${type.toCanonical()}: ${e.originalMessage}",
                false,
                message.id,
            )
        }

    /**
     * A [MessageHandler] that hands [block] the payload read as a [type],
     * with the message and the consumer's transaction. A payload that is not
     * JSON of that shape can never be handled: the message goes to dead
     * letters at once ([RelayboxException.Rejected]) with the reason. Other
     * exceptions mean what they mean for [messageHandler].
     */
    fun <T> handler(
        type: Class<T>,
        block: TypedHandlerFunction<T>,
    ): MessageHandler = handler(mapper.constructType(type), block)

    /** [handler] for a generic type. */
    fun <T> handler(
        type: TypeReference<T>,
        block: TypedHandlerFunction<T>,
    ): MessageHandler = handler(mapper.constructType(type), block)

    /** [handler] for a Jackson [JavaType]. */
    fun <T> handler(
        type: JavaType,
        block: TypedHandlerFunction<T>,
    ): MessageHandler =
        messageHandler { message, tx ->
            block.handle(decodeOrReject(message, type), message, tx)
        }

    /**
     * A [SuspendMessageHandler] that hands [block] the payload read as a
     * [type]; payloads of another shape are dead-lettered at once, as with
     * [handler]. Runs as [suspendHandler] does.
     */
    fun <T> suspendHandler(
        type: JavaType,
        block: suspend (T, Message, Transaction) -> Unit,
    ): SuspendMessageHandler =
        io.relaybox.suspendHandler { message, tx ->
            block(decodeOrReject(message, type), message, tx)
        }

    private fun <T> decodeOrReject(
        message: Message,
        type: JavaType,
    ): T =
        try {
            decode(message, type)
        } catch (e: RelayboxException.InvalidMessage) {
            throw RelayboxException.Rejected(e.reason, false, message.id)
        }

    /** The shared default codec and mapper. */
    companion object {
        private const val JSON = "application/json"

        /**
         * A new `ObjectMapper` with every Jackson module found on the
         * classpath registered (`findAndRegisterModules`: the Kotlin module,
         * `java.time` support, ... when present).
         */
        @JvmStatic
        fun defaultMapper(): ObjectMapper = ObjectMapper().findAndRegisterModules()

        /** A codec with [defaultMapper], built on first use. */
        @JvmStatic
        val default: JsonCodec by lazy { JsonCodec() }
    }
}

/** The body of a typed handler: handles [payload], the decoded payload of [message], in the consumer's transaction [tx]. */
fun interface TypedHandlerFunction<T> {
    /** Handles one message; may throw any exception (checked ones too, from Java). */
    @Throws(Exception::class)
    fun handle(
        payload: T,
        message: Message,
        tx: Transaction,
    )
}

/** A message to [topic] whose payload is [value] as JSON, written by [codec] (see [JsonCodec.message]). */
@Throws(RelayboxException::class)
fun valueMessage(
    topic: String,
    value: Any?,
    key: String? = null,
    type: String? = null,
    codec: JsonCodec = JsonCodec.default,
): MessageSpec = codec.message(topic, value, key, type)

/** The payload read as a [T] by [codec] (see [JsonCodec.decode]). */
@Throws(RelayboxException::class)
inline fun <reified T> Message.payloadAs(codec: JsonCodec = JsonCodec.default): T = codec.decode(this, object : TypeReference<T>() {})

/** A [MessageHandler] receiving the payload as a [T] (see [JsonCodec.handler]). */
inline fun <reified T> jsonHandler(
    codec: JsonCodec = JsonCodec.default,
    noinline block: (T, Message, Transaction) -> Unit,
): MessageHandler = codec.handler(object : TypeReference<T>() {}) { payload, message, tx -> block(payload, message, tx) }

/** A [SuspendMessageHandler] receiving the payload as a [T] (see [JsonCodec.suspendHandler]). */
inline fun <reified T> suspendJsonHandler(
    codec: JsonCodec = JsonCodec.default,
    noinline block: suspend (T, Message, Transaction) -> Unit,
): SuspendMessageHandler = codec.suspendHandler(codec.mapper.constructType(object : TypeReference<T>() {}), block)
