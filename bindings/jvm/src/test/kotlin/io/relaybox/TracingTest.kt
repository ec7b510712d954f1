package io.relaybox

import io.opentelemetry.api.GlobalOpenTelemetry
import io.opentelemetry.api.trace.SpanKind
import io.opentelemetry.sdk.OpenTelemetrySdk
import io.opentelemetry.sdk.testing.exporter.InMemorySpanExporter
import io.opentelemetry.sdk.trace.SdkTracerProvider
import io.opentelemetry.sdk.trace.data.SpanData
import io.opentelemetry.sdk.trace.export.SimpleSpanProcessor
import kotlinx.coroutines.runBlocking
import org.junit.jupiter.api.AfterEach
import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.Assertions.assertTrue
import org.junit.jupiter.api.Test
import java.util.concurrent.ConcurrentHashMap

/**
 * OpenTelemetry: the official Java SDK's in-memory exporter sees one trace
 * from the application's request span through the `create` span of the
 * message builders to the `process` span around the handler and a span the
 * handler makes, over the database transport and Kafka, with a blocking and
 * a `suspend` handler.
 */
class TracingTest {
    private val prefix = TestSupport.newPrefix()

    @AfterEach
    fun dropTables() = TestSupport.dropTables(prefix)

    private fun spansOf(traceId: String): List<SpanData> = exporter.finishedSpanItems.filter { it.traceId == traceId }

    private fun one(
        spans: List<SpanData>,
        name: String,
    ): SpanData {
        val found = spans.filter { it.name == name }
        assertEquals(1, found.size, "spans named $name: ${spans.map { it.name }}")
        return found[0]
    }

    private fun check(
        topic: String,
        requestTrace: String,
        requestSpan: String,
        id: String,
        headers: Map<String, String>,
    ) {
        val spans = spansOf(requestTrace)
        val create = one(spans, "create $topic")
        val process = one(spans, "process $topic")
        val work = one(spans, "charge card")
        assertEquals(requestSpan, create.parentSpanId)
        assertEquals(create.spanId, process.parentSpanId)
        assertEquals(process.spanId, work.parentSpanId)
        assertEquals(SpanKind.PRODUCER, create.kind)
        assertEquals(SpanKind.CONSUMER, process.kind)
        assertTrue(headers.getValue("traceparent").startsWith("00-$requestTrace-${create.spanId}-"))
        val attributes = process.attributes.asMap().mapKeys { it.key.key }
        assertEquals(topic, attributes["messaging.destination.name"])
        assertEquals(id, attributes["messaging.message.id"])
    }

    private fun run(
        transport: String,
        suspending: Boolean,
    ) = runBlocking {
        Outbox.open(TestSupport.databaseUrl, TestSupport.options(prefix), true).use { outbox ->
            val topic = "${prefix}traced".replace('_', '-')
            val tracer = GlobalOpenTelemetry.getTracer("shop")
            val request = tracer.spanBuilder("POST /orders").startSpan()
            val id =
                request.makeCurrent().use {
                    outbox.transaction { tx -> tx.enqueue(jsonMessage(topic, """{"order": 7}""", key = "order-7")) }
                }
            request.end()
            val seen = ConcurrentHashMap<String, Map<String, String>>()
            val config = """{"group": "${prefix}g", "poll_interval": "100ms"}"""
            Relay.start(outbox, transport, "{}").use { relay ->
                TestSupport.waitFor("relayed") { relay.stats().delivered == 1L }
            }
            val handle = { message: Message ->
                tracer.spanBuilder("charge card").startSpan().end()
                seen[message.id] = message.headers
            }
            val consumer =
                if (suspending) {
                    Consumer.startSuspending(outbox, transport, topic, config, suspendHandler { m, _ -> handle(m) })
                } else {
                    Consumer.start(outbox, transport, topic, config, messageHandler { m, _ -> handle(m) })
                }
            consumer.use {
                TestSupport.waitFor("handled") { seen.containsKey(id) }
                it.stop()
            }
            check(topic, request.spanContext.traceId, request.spanContext.spanId, id, seen.getValue(id))
        }
    }

    @Test
    fun `one trace from the request to the handler over the database transport`() = run(Transports.database(), suspending = false)

    @Test
    fun `one trace from the request to a suspend handler over Kafka`() =
        run(Transports.kafka(TestSupport.kafkaBootstrap, createTopics = true), suspending = true)

    @Test
    fun `a message built with its own traceparent keeps it`() {
        val given = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        val spec = MessageSpec(topic = "t", payloadText = "x", headers = mapOf("traceparent" to given)).withTraceContext()
        assertEquals(given, spec.headers["traceparent"])
    }

    companion object {
        /** The process's OpenTelemetry: every finished span goes to this exporter. */
        val exporter: InMemorySpanExporter by lazy {
            val exporter = InMemorySpanExporter.create()
            OpenTelemetrySdk
                .builder()
                .setTracerProvider(SdkTracerProvider.builder().addSpanProcessor(SimpleSpanProcessor.create(exporter)).build())
                .buildAndRegisterGlobal()
            exporter
        }
    }

    init {
        exporter
    }
}
