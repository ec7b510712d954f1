package io.relaybox

import kotlinx.coroutines.runBlocking
import org.apache.kafka.clients.consumer.ConsumerConfig
import org.apache.kafka.clients.consumer.KafkaConsumer
import org.apache.kafka.common.TopicPartition
import org.apache.kafka.common.serialization.ByteArrayDeserializer
import org.junit.jupiter.api.AfterEach
import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.Assertions.assertThrows
import org.junit.jupiter.api.Test
import java.time.Duration
import java.util.Properties

/** The outbox from Kotlin with the suspending calls: rollback, commit, delivery to Kafka. */
class OutboxTest {
    private val prefix = TestSupport.newPrefix()

    @AfterEach
    fun dropTables() = TestSupport.dropTables(prefix)

    private suspend fun openOutbox(): Outbox = Outbox.open(TestSupport.databaseUrl, TestSupport.options(prefix), true)

    @Test
    fun `rollback leaves no event and no business row`() =
        runBlocking {
            openOutbox().use { outbox ->
                TestSupport.sql("CREATE TABLE ${prefix}orders (id bigint PRIMARY KEY)")
                val failure =
                    assertThrows(IllegalStateException::class.java) {
                        runBlocking {
                            outbox.transaction { tx ->
                                tx.execute("INSERT INTO ${prefix}orders VALUES (\$1)", listOf(SqlValue.Int(1)))
                                tx.enqueue(jsonMessage("jvm-orders", """{"id": 1}""", key = "order-1", type = "OrderPlaced"))
                                error("payment declined")
                            }
                        }
                    }
                assertEquals("payment declined", failure.message)
                assertEquals(0L, TestSupport.count("${prefix}outbox"))
                assertEquals(0L, TestSupport.count("${prefix}orders"))
                assertEquals(0L, outbox.pendingCount())

                val tx = outbox.begin()
                tx.enqueue(textMessage("jvm-orders", "hello"))
                tx.rollback()
                tx.close()
                assertEquals(0L, TestSupport.count("${prefix}outbox"))
            }
        }

    @Test
    fun `an idempotency key writes once and returns the first id`() =
        runBlocking {
            openOutbox().use { outbox ->
                fun placed() = MessageSpec(topic = "jvm-orders", payloadJson = """{"id": 1}""", idempotencyKey = "order-1-placed")
                val first = outbox.transaction { tx -> tx.enqueue(placed()) }
                val again = outbox.transaction { tx -> tx.enqueue(placed()) }
                assertEquals(first, again)
                assertEquals(1L, outbox.pendingCount())
            }
        }

    @Test
    fun `a committed event is delivered to Kafka exactly once`() =
        runBlocking {
            val topic = "${prefix}orders".replace('_', '-')
            openOutbox().use { outbox ->
                TestSupport.sql("CREATE TABLE ${prefix}orders (id bigint PRIMARY KEY)")
                val ids =
                    outbox.transaction { tx ->
                        tx.execute("INSERT INTO ${prefix}orders VALUES (\$1)", listOf(SqlValue.Int(7)))
                        (0 until 5).map { n ->
                            tx.enqueue(jsonMessage(topic, """{"n": $n}""", key = "k${n % 2}", type = "Numbered"))
                        }
                    }
                assertEquals(1L, TestSupport.count("${prefix}orders"))
                assertEquals(5L, outbox.pendingCount())

                Relay.start(outbox, Transports.kafka(TestSupport.kafkaBootstrap, createTopics = true), "{}").use { relay ->
                    TestSupport.waitFor("5 messages relayed") { relay.stats().delivered == 5L }
                    relay.stop()
                    assertEquals(false, relay.isRunning())
                }
                assertEquals(0L, outbox.pendingCount())

                val seen = readTopic(topic, expected = 5)
                assertEquals(ids.sorted(), seen.sorted(), "each committed event once on the topic")
            }
        }

    /** The `relaybox-id` headers of every record on [topic], read until [expected] came and a quiet second passed. */
    private fun readTopic(
        topic: String,
        expected: Int,
    ): List<String> {
        val props = Properties()
        props[ConsumerConfig.BOOTSTRAP_SERVERS_CONFIG] = TestSupport.kafkaBootstrap
        props[ConsumerConfig.ENABLE_AUTO_COMMIT_CONFIG] = "false"
        val ids = mutableListOf<String>()
        KafkaConsumer(props, ByteArrayDeserializer(), ByteArrayDeserializer()).use { consumer ->
            val partitions = consumer.partitionsFor(topic, Duration.ofSeconds(10)).map { TopicPartition(topic, it.partition()) }
            consumer.assign(partitions)
            consumer.seekToBeginning(partitions)
            val deadline = System.nanoTime() + Duration.ofSeconds(30).toNanos()
            var quietSince = 0L
            while (System.nanoTime() < deadline) {
                val records = consumer.poll(Duration.ofMillis(200))
                records.forEach { record ->
                    val header = record.headers().lastHeader("relaybox-id")
                    ids.add(header?.value()?.decodeToString() ?: "missing id header")
                }
                if (ids.size >= expected) {
                    if (quietSince == 0L) quietSince = System.nanoTime()
                    if (System.nanoTime() - quietSince > Duration.ofSeconds(1).toNanos()) break
                }
            }
        }
        return ids
    }
}
