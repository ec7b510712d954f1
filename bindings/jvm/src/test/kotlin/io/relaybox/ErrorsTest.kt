package io.relaybox

import kotlinx.coroutines.runBlocking
import org.junit.jupiter.api.AfterEach
import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.Assertions.assertFalse
import org.junit.jupiter.api.Assertions.assertInstanceOf
import org.junit.jupiter.api.Assertions.assertNull
import org.junit.jupiter.api.Assertions.assertThrows
import org.junit.jupiter.api.Assertions.assertTrue
import org.junit.jupiter.api.Test

/** Bad input raises the matching `RelayboxException` subclass and writes nothing. */
class ErrorsTest {
    private val prefix = TestSupport.newPrefix()

    @AfterEach
    fun dropTables() = TestSupport.dropTables(prefix)

    private fun <T : RelayboxException> assertRaises(
        type: Class<T>,
        block: suspend () -> Unit,
    ): T = assertThrows(type) { runBlocking { block() } }

    @Test
    fun `invalid messages raise typed errors and write nothing`() =
        runBlocking {
            Outbox.open(TestSupport.databaseUrl, TestSupport.options(prefix), true).use { outbox ->
                TestSupport.sql("CREATE TABLE ${prefix}orders (id bigint PRIMARY KEY)")
                outbox.begin().use { tx ->
                    tx.execute("INSERT INTO ${prefix}orders VALUES (1)", listOf())

                    val topic = assertRaises(RelayboxException.InvalidTopic::class.java) { tx.enqueue(jsonMessage("bad topic!", "{}")) }
                    assertEquals("invalid_topic", topic.code)
                    assertFalse(topic.retryable)
                    assertNull(topic.messageId)
                    assertTrue(topic.reason.contains("bad topic!"), topic.reason)
                    assertEquals(topic.message, topic.toString().substringAfter(": "))

                    val json = assertRaises(RelayboxException.InvalidMessage::class.java) { tx.enqueue(jsonMessage("t", "{not json")) }
                    assertEquals("invalid_message", json.code)

                    val two = MessageSpec(topic = "t", payloadJson = "1", payloadText = "one")
                    assertRaises(RelayboxException.InvalidMessage::class.java) { tx.enqueue(two) }

                    val header = MessageSpec(topic = "t", payloadText = "x", headers = mapOf("bad header" to "v"))
                    assertRaises(RelayboxException.InvalidHeader::class.java) { tx.enqueue(header) }

                    val big = MessageSpec(topic = "t", payloadBytes = ByteArray(2 * 1024 * 1024))
                    assertRaises(RelayboxException.PayloadTooLarge::class.java) { tx.enqueue(big) }

                    val batch = listOf(textMessage("t", "fine"), textMessage("bad topic!", "x"))
                    assertRaises(RelayboxException.InvalidTopic::class.java) { tx.enqueueBatch(batch) }

                    val uuid = listOf(SqlValue.Uuid("not-a-uuid"))
                    assertRaises(RelayboxException.InvalidValue::class.java) { tx.execute("SELECT \$1::uuid", uuid) }

                    // The transaction is still usable, and commits the business row alone.
                    tx.commit()
                }
                assertEquals(1L, TestSupport.count("${prefix}orders"))
                assertEquals(0L, TestSupport.count("${prefix}outbox"))
                assertEquals(0L, outbox.pendingCount())
            }
        }

    @Test
    fun `bad configuration raises InvalidConfig`() =
        runBlocking {
            assertRaises(RelayboxException.InvalidConfig::class.java) {
                Outbox.open(TestSupport.databaseUrl, """{"table_prefix": "no spaces allowed"}""", false)
            }
            assertRaises(RelayboxException.InvalidConfig::class.java) {
                Outbox.open(TestSupport.databaseUrl, "{not json", false)
            }
            Outbox.open(TestSupport.databaseUrl, TestSupport.options(prefix), true).use { outbox ->
                assertThrows(RelayboxException.InvalidConfig::class.java) { Relay.start(outbox, "\"carrier-pigeon\"", "{}") }
                assertThrows(
                    RelayboxException.InvalidConfig::class.java,
                ) { Relay.start(outbox, Transports.database(), """{"batch_size": "many"}""") }
                val handler = messageHandler { _, _ -> }
                val noGroup =
                    assertThrows(RelayboxException.InvalidConfig::class.java) {
                        Consumer.start(outbox, Transports.database(), "t", "{}", handler)
                    }
                assertEquals("invalid_config", noGroup.code)
            }
        }

    @Test
    fun `database errors never show the password`() {
        val url = "postgres://relaybox:s3cr3t-pw@127.0.0.1:1/none"
        val error =
            assertThrows(RelayboxException::class.java) {
                Outbox.openBlocking(url, """{"connect_timeout": "2s"}""", false)
            }
        assertTrue(error is RelayboxException.Database || error is RelayboxException.Timeout, error.toString())
        assertFalse(error.message!!.contains("s3cr3t-pw"), error.message)
        assertFalse(error.toString().contains("s3cr3t-pw"), error.toString())
    }

    @Test
    fun `closed handles raise Closed`() =
        runBlocking {
            val outbox = Outbox.open(TestSupport.databaseUrl, TestSupport.options(prefix), true)
            outbox.shutdown()
            val closed = assertRaises(RelayboxException.Closed::class.java) { outbox.begin() }
            assertEquals("closed", closed.code)
            outbox.close()
        }

    @Test
    fun `a panic in the core arrives as Internal, never as a crash`() {
        val blocking = assertThrows(RelayboxException.Internal::class.java) { panicForTestsBlocking("boom") }
        assertTrue(blocking.reason.contains("boom"), blocking.reason)
        val suspending = assertRaises(RelayboxException.Internal::class.java) { panicForTests("kaboom") }
        assertTrue(suspending.reason.contains("kaboom"), suspending.reason)
        panicForTestsBlocking("")
    }

    @Test
    fun `a handler that throws is retried, and Rejected dead-letters at once`() =
        runBlocking {
            Outbox.open(TestSupport.databaseUrl, TestSupport.options(prefix), true).use { outbox ->
                val topic = "${prefix}jobs".replace('_', '-')
                outbox.transaction { tx ->
                    tx.enqueue(textMessage(topic, "flaky"))
                    tx.enqueue(textMessage(topic, "poison"))
                }
                Relay.start(outbox, Transports.database(), "{}").use { relay ->
                    TestSupport.waitFor("relayed") { relay.stats().delivered == 2L }
                }
                val attempts =
                    java.util.concurrent.atomic
                        .AtomicInteger()
                val handler =
                    messageHandler { message, _ ->
                        when (message.text()) {
                            "poison" -> throw RelayboxException.Rejected("cannot be handled", false, message.id)
                            else -> if (attempts.incrementAndGet() == 1) throw IllegalStateException("try again")
                        }
                    }
                val config = """{"group": "${prefix}g", "retry_delay": "10ms", "poll_interval": "100ms"}"""
                Consumer.start(outbox, Transports.database(), topic, config, handler).use { consumer ->
                    TestSupport.waitFor("both settled") {
                        val s = consumer.stats()
                        s.processed == 1L && s.deadLettered == 1L
                    }
                    assertEquals(1L, consumer.stats().retried)
                    consumer.stop()
                }
                assertEquals(2, attempts.get())
                val errors = TestSupport.column("${prefix}dead_letters", "last_error")
                assertEquals(1, errors.size, "one dead letter: $errors")
                assertTrue(errors[0].contains("cannot be handled"), errors[0])
            }
        }

    @Test
    fun `exceptions form one sealed hierarchy`() {
        val e: RelayboxException = RelayboxException.Timeout("slow", true, null)
        assertInstanceOf(Exception::class.java, e)
        assertEquals("timeout", e.code)
    }
}
