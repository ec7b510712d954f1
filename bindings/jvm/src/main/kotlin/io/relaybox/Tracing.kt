package io.relaybox

import io.opentelemetry.api.GlobalOpenTelemetry
import io.opentelemetry.api.trace.Span
import io.opentelemetry.api.trace.SpanKind
import io.opentelemetry.api.trace.StatusCode
import io.opentelemetry.api.trace.propagation.W3CTraceContextPropagator
import io.opentelemetry.context.Context
import io.opentelemetry.context.propagation.TextMapGetter
import io.opentelemetry.extension.kotlin.asContextElement
import kotlinx.coroutines.withContext

/**
 * OpenTelemetry spans of the JVM API, when `io.opentelemetry:opentelemetry-api`
 * is on the class path (an optional dependency): the message builders
 * ([jsonMessage], [textMessage], [valueMessage], [JsonCodec.message] and
 * [withTraceContext]) record a `create` span, a child of the current span,
 * and put its context in the message's `traceparent`/`tracestate` headers;
 * the handler adapters ([messageHandler], [suspendHandler], [hostHandler] and
 * the JSON ones) run each call inside a `process` span whose parent is that
 * context, current for the handler, so its own spans join the producer's
 * trace. Without the API nothing here runs.
 */
internal object Tracing {
    /** Whether the OpenTelemetry API is on the class path. */
    val available: Boolean =
        try {
            Class.forName("io.opentelemetry.api.GlobalOpenTelemetry")
            true
        } catch (e: ClassNotFoundException) {
            false
        }

    /** Whether suspending handlers can carry the context (opentelemetry-extension-kotlin). */
    private val coroutines: Boolean =
        available &&
            try {
                Class.forName("io.opentelemetry.extension.kotlin.ContextExtensionsKt")
                true
            } catch (e: ClassNotFoundException) {
                false
            }

    fun stamp(spec: MessageSpec): MessageSpec = if (available && !spec.headers.containsKey("traceparent")) Otel.stamp(spec) else spec

    fun <T> process(
        message: Message,
        block: () -> T,
    ): T = if (available) Otel.process(message, block) else block()

    suspend fun <T> processSuspending(
        message: Message,
        block: suspend () -> T,
    ): T = if (coroutines) Otel.processSuspending(message, block) else block()

    /** The code that names OpenTelemetry classes, loaded only when they are present. */
    private object Otel {
        private const val SCOPE = "relaybox"
        private val propagator = W3CTraceContextPropagator.getInstance()
        private val headers =
            object : TextMapGetter<Map<String, String>> {
                override fun keys(carrier: Map<String, String>): Iterable<String> = carrier.keys

                override fun get(
                    carrier: Map<String, String>?,
                    key: String,
                ): String? = carrier?.get(key)
            }

        private fun tracer() = GlobalOpenTelemetry.getTracer(SCOPE)

        fun stamp(spec: MessageSpec): MessageSpec {
            val span =
                tracer()
                    .spanBuilder("create ${spec.topic}")
                    .setSpanKind(SpanKind.PRODUCER)
                    .setAttribute("messaging.system", "relaybox")
                    .setAttribute("messaging.destination.name", spec.topic)
                    .setAttribute("messaging.operation.name", "create")
                    .setAttribute("messaging.operation.type", "create")
                    .startSpan()
            val carrier = HashMap(spec.headers)
            try {
                propagator.inject(Context.current().with(span), carrier) { c, k, v -> c!![k] = v }
            } finally {
                span.end()
            }
            return if (carrier.size == spec.headers.size) spec else spec.copy(headers = carrier)
        }

        private fun start(message: Message) =
            tracer()
                .spanBuilder("process ${message.topic}")
                .setParent(propagator.extract(Context.root(), message.headers, headers))
                .setSpanKind(SpanKind.CONSUMER)
                .setAttribute("messaging.destination.name", message.topic)
                .setAttribute("messaging.message.id", message.id)
                .setAttribute("messaging.operation.name", "process")
                .setAttribute("messaging.operation.type", "process")
                .startSpan()

        /** Runs [block] with the `process` span of [message]; records its failure and ends the span. */
        private inline fun <T> inSpan(
            message: Message,
            block: (Span) -> T,
        ): T {
            val span = start(message)
            try {
                return block(span)
            } catch (e: Throwable) {
                span.recordException(e)
                span.setStatus(StatusCode.ERROR, e.message ?: e.javaClass.name)
                throw e
            } finally {
                span.end()
            }
        }

        fun <T> process(
            message: Message,
            block: () -> T,
        ): T = inSpan(message) { span -> span.makeCurrent().use { block() } }

        suspend fun <T> processSuspending(
            message: Message,
            block: suspend () -> T,
        ): T = inSpan(message) { span -> withContext(Context.current().with(span).asContextElement()) { block() } }
    }
}

/**
 * This message with the trace context of a new `create` span (a child of the
 * current OpenTelemetry span) in its headers; itself when it already has a
 * `traceparent` header or the OpenTelemetry API is not on the class path.
 * The message builders call it; call it on a [MessageSpec] you construct
 * yourself.
 */
fun MessageSpec.withTraceContext(): MessageSpec = Tracing.stamp(this)
