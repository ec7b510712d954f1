package io.relaybox

import kotlinx.coroutines.runBlocking
import org.junit.jupiter.api.AfterEach
import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.Assertions.assertThrows
import org.junit.jupiter.api.Assertions.assertTrue
import org.junit.jupiter.api.Test
import java.math.BigDecimal
import java.time.Instant
import java.util.concurrent.CopyOnWriteArrayList

/** An order line of [Order]. */
data class Line(
    val sku: String,
    val quantity: Int,
)

/** A Kotlin data class sent as a typed payload. */
data class Order(
    val id: Long,
    val customer: String,
    val lines: List<Line>,
    val total: BigDecimal,
    val note: String? = null,
)

/** Typed payloads: a data class enqueued as JSON and consumed as that class. */
class JsonPayloadTest {
    private val prefix = TestSupport.newPrefix()

    @AfterEach
    fun dropTables() = TestSupport.dropTables(prefix)

    @Test
    fun `a data class round-trips, and a payload of another shape is dead-lettered at once`() =
        runBlocking {
            Outbox.open(TestSupport.databaseUrl, TestSupport.options(prefix), true).use { outbox ->
                val topic = "${prefix}orders".replace('_', '-')
                val order = Order(42, "ada", listOf(Line("book", 2), Line("pen", 1)), BigDecimal("19.90"))
                val (orderId, poisonId) =
                    outbox.transaction { tx ->
                        listOf(
                            tx.enqueue(valueMessage(topic, order, key = "42", type = "OrderPlaced")),
                            tx.enqueue(textMessage(topic, "not an order", key = "42")),
                        )
                    }
                val received = CopyOnWriteArrayList<Pair<Order, Message>>()
                val handler = suspendJsonHandler<Order> { value, message, _ -> received.add(value to message) }
                val config = """{"group": "${prefix}g", "poll_interval": "100ms"}"""
                Relay.start(outbox, Transports.database(), """{"poll_interval": "100ms"}""").use { relay ->
                    Consumer.startSuspending(outbox, Transports.database(), topic, config, handler).use { consumer ->
                        TestSupport.waitFor("both settled") {
                            val s = consumer.stats()
                            s.processed == 1L && s.deadLettered == 1L
                        }
                        assertEquals(0L, consumer.stats().retried, "the undecodable payload is dead-lettered without retries")
                        consumer.stop()
                    }
                    relay.stop()
                }
                assertEquals(1, received.size)
                val (value, message) = received[0]
                assertEquals(order, value)
                assertEquals(orderId, message.id)
                assertEquals("application/json", message.contentType)
                assertEquals("OrderPlaced", message.eventType)
                assertEquals(order, message.payloadAs<Order>())
                assertEquals(
                    mapOf("id" to 42, "customer" to "ada", "total" to 19.90),
                    message.payloadAs<Map<String, Any?>>().filterKeys { it in setOf("id", "customer", "total") },
                )

                val letter = outbox.deadLetters().single()
                assertEquals(poisonId, letter.message.id)
                assertTrue(letter.lastError.contains("is not a JSON io.relaybox.Order"), letter.lastError)
                assertEquals("consumer:${prefix}g", letter.origin)
            }
        }

    @Test
    fun `a value Jackson cannot write or read raises InvalidMessage and writes nothing`() =
        runBlocking {
            Outbox.open(TestSupport.databaseUrl, TestSupport.options(prefix), true).use { outbox ->
                val topic = "${prefix}orders".replace('_', '-')
                val unwritable =
                    assertThrows(RelayboxException.InvalidMessage::class.java) {
                        runBlocking { outbox.transaction { tx -> tx.enqueue(valueMessage(topic, Any())) } }
                    }
                assertTrue(unwritable.reason.contains("payload of class java.lang.Object is not JSON-serialisable"), unwritable.reason)
                assertEquals("invalid_message", unwritable.code)
                assertEquals(0L, outbox.pendingCount())

                val now = Instant.now()
                val message =
                    Message(
                        "0192f0c1-7a3b-7c4d-8e9f-0a1b2c3d4e5f",
                        topic,
                        null,
                        "",
                        "[1, 2]".toByteArray(),
                        "application/json",
                        emptyMap(),
                        now,
                        now,
                    )
                val unreadable = assertThrows(RelayboxException.InvalidMessage::class.java) { message.payloadAs<Order>() }
                assertEquals(message.id, unreadable.messageId)
                assertTrue(
                    unreadable.reason.contains("payload of message ${message.id} is not a JSON io.relaybox.Order"),
                    unreadable.reason,
                )
                assertEquals(listOf(1, 2), message.payloadAs<List<Int>>())
            }
        }
}
