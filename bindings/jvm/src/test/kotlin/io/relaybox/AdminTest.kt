package io.relaybox

import kotlinx.coroutines.runBlocking
import org.junit.jupiter.api.AfterEach
import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.Assertions.assertThrows
import org.junit.jupiter.api.Assertions.assertTrue
import org.junit.jupiter.api.Test
import java.util.concurrent.ConcurrentHashMap
import java.util.concurrent.atomic.AtomicBoolean
import java.util.concurrent.atomic.AtomicInteger

/** Status and dead letters of an outbox, over the database transport. */
class AdminTest {
    private val prefix = TestSupport.newPrefix()

    @AfterEach
    fun dropTables() = TestSupport.dropTables(prefix)

    @Test
    fun `status shows the backlog per topic, then the relay that delivered it`() =
        runBlocking {
            val options = """{"table_prefix": "$prefix", "partitions": 4}"""
            Outbox.open(TestSupport.databaseUrl, options, true).use { outbox ->
                val orders = "${prefix}orders".replace('_', '-')
                val mail = "${prefix}mail".replace('_', '-')
                val dropped = "${prefix}dropped".replace('_', '-')
                outbox.transaction { tx -> (1..3).forEach { tx.enqueue(textMessage(orders, "order $it", key = "$it")) } }
                outbox.transaction { tx -> tx.enqueue(textMessage(mail, "hello")) }
                val tx = outbox.begin()
                tx.enqueue(textMessage(dropped, "rolled back"))
                tx.rollback()
                tx.close()

                val before = outbox.status()
                val backlog = before.topics.associateBy { it.topic }
                assertEquals(setOf(orders, mail), backlog.keys, "topics with a backlog: ${before.topics}")
                assertEquals(3L, backlog.getValue(orders).pending)
                assertEquals(1L, backlog.getValue(mail).pending)
                assertEquals(0L, backlog.getValue(orders).retrying)
                assertTrue(backlog.getValue(orders).oldestAgeSeconds >= 0.0)
                assertEquals(0L, before.deadLetters)
                assertEquals(4, before.partitions)
                assertEquals(0L, before.liveRelays)
                assertEquals(
                    before.topics.map { it.topic to it.pending },
                    outbox.statusBlocking().topics.map { it.topic to it.pending },
                )

                Relay.start(outbox, Transports.database(), """{"poll_interval": "100ms"}""").use { relay ->
                    TestSupport.waitFor("delivered") { relay.stats().delivered == 4L }
                    TestSupport.waitFor("the relay is live and holds every partition") {
                        val s = outbox.statusBlocking()
                        s.liveRelays == 1L && s.leaseOwners.sumOf { it.partitions } == 4L
                    }
                    assertEquals(emptyList<TopicBacklog>(), outbox.status().topics)
                    relay.stop()
                }
            }
        }

    @Test
    fun `a dead letter is listed, retried and handled once, or purged`() =
        runBlocking {
            Outbox.open(TestSupport.databaseUrl, TestSupport.options(prefix), true).use { outbox ->
                val topic = "${prefix}jobs".replace('_', '-')
                val group = "${prefix}g"
                TestSupport.sql("CREATE TABLE ${prefix}handled (id text PRIMARY KEY, body text)")
                val (first, second) =
                    outbox.transaction { tx ->
                        listOf(tx.enqueue(textMessage(topic, "first")), tx.enqueue(textMessage(topic, "second")))
                    }
                val reject = AtomicBoolean(true)
                val handled = ConcurrentHashMap<String, AtomicInteger>()
                val handler =
                    messageHandler { message, tx ->
                        if (reject.get()) throw RelayboxException.Rejected("not yet: ${message.text()}", false, message.id)
                        handled.computeIfAbsent(message.id) { AtomicInteger() }.incrementAndGet()
                        tx.executeBlocking(
                            "INSERT INTO ${prefix}handled VALUES (\$1, \$2)",
                            listOf(SqlValue.Text(message.id), SqlValue.Text(message.text())),
                        )
                    }
                val config = """{"group": "$group", "poll_interval": "100ms"}"""
                Relay.start(outbox, Transports.database(), """{"poll_interval": "100ms"}""").use { relay ->
                    Consumer.start(outbox, Transports.database(), topic, config, handler).use { consumer ->
                        TestSupport.waitFor("both dead-lettered") { consumer.stats().deadLettered == 2L }

                        val letters = outbox.deadLetters()
                        assertEquals(listOf(first, second).sorted(), letters.map { it.message.id }.sorted())
                        for (letter in letters) {
                            assertEquals("consumer:$group", letter.origin)
                            assertEquals(topic, letter.message.topic)
                            assertTrue(letter.lastError.contains("not yet: ${letter.message.text()}"), letter.lastError)
                            assertTrue(letter.attempts >= 1L)
                        }
                        assertEquals(1, outbox.deadLetters(limit = 1).size)
                        assertEquals(2L, outbox.status().deadLetters)

                        // Bad input names the problem and changes nothing.
                        val badId =
                            assertThrows(RelayboxException.InvalidValue::class.java) {
                                runBlocking { outbox.retryDeadLetters(listOf(first, "nope")) }
                            }
                        assertTrue(badId.reason.contains("\"nope\" is not a message id"), badId.reason)
                        assertEquals("invalid_value", badId.code)
                        assertThrows(RelayboxException.InvalidValue::class.java) { outbox.purgeDeadLettersBlocking(listOf(second, "")) }
                        val badLimit = assertThrows(RelayboxException.InvalidValue::class.java) { runBlocking { outbox.deadLetters(-1) } }
                        assertTrue(badLimit.reason.contains("limit must be zero or more"), badLimit.reason)
                        assertEquals(2, outbox.deadLetters().size)

                        reject.set(false)
                        assertEquals(1L, outbox.retryDeadLetters(listOf(first)))
                        TestSupport.waitFor("the retried message handled") { consumer.stats().processed == 1L }
                        assertEquals(listOf(second), outbox.deadLetters().map { it.message.id })
                        assertEquals(0L, outbox.retryDeadLetters(listOf(first)), "no longer a dead letter")

                        assertEquals(1L, outbox.purgeDeadLetters(listOf(second)))
                        assertEquals(emptyList<DeadLetter>(), outbox.deadLetters())
                        assertEquals(0L, outbox.purgeDeadLetters())
                        assertEquals(0L, outbox.retryDeadLetters())
                        assertEquals(0L, outbox.status().deadLetters)
                        TestSupport.waitFor("the outbox drained") { outbox.pendingCountBlocking() == 0L }
                        consumer.stop()
                    }
                    relay.stop()
                }
                assertEquals(mapOf(first to 1), handled.mapValues { it.value.get() })
                assertEquals(listOf(first), TestSupport.column("${prefix}handled", "id"))
                assertEquals(listOf("first"), TestSupport.column("${prefix}handled", "body"))
            }
        }

    @Test
    fun `a key the relay dead-lettered is parked until its dead letter is purged`() =
        runBlocking {
            Outbox.open(TestSupport.databaseUrl, TestSupport.options(prefix), true).use { outbox ->
                val topic = "${prefix}parked".replace('_', '-')
                // The Kafka client refuses records over 2,000 bytes for good:
                // the relay dead-letters the large one at once.
                val kafka =
                    """{"kafka": {"bootstrap_servers": "${TestSupport.kafkaBootstrap}", "create_topics": true,
                    |"producer_properties": {"message.max.bytes": "2000"}}}
                    """.trimMargin()
                val poison =
                    outbox.transaction { tx ->
                        val id = tx.enqueue(textMessage(topic, "x".repeat(5000), key = "held"))
                        tx.enqueue(textMessage(topic, "after the poison", key = "held"))
                        tx.enqueue(textMessage(topic, "another key", key = "free"))
                        id
                    }
                Relay.start(outbox, kafka, """{"poll_interval": "100ms"}""").use { relay ->
                    TestSupport.waitFor("the poison dead-lettered and the free key delivered") {
                        relay.stats().deadLettered == 1L && relay.stats().delivered == 1L
                    }
                    val parked = outbox.status()
                    assertEquals(1L, parked.parkedKeysTotal)
                    val key = parked.parkedKeys.single()
                    assertEquals(topic, key.topic)
                    assertEquals("held", key.key)
                    assertEquals(poison, key.deadLetterId)
                    assertTrue(key.partition >= 0L)
                    assertEquals(1L, outbox.pendingCountBlocking(), "the key's later message waits")

                    assertEquals(1L, outbox.purgeDeadLetters(listOf(poison)))
                    TestSupport.waitFor("the key resumed without the poison") { outbox.pendingCountBlocking() == 0L }
                    assertEquals(2L, relay.stats().delivered)
                    val after = outbox.statusBlocking()
                    assertEquals(0L, after.parkedKeysTotal)
                    assertEquals(emptyList<ParkedKey>(), after.parkedKeys)
                    relay.stop()
                }
            }
        }
}
