package io.relaybox

import kotlinx.coroutines.runBlocking
import org.apache.kafka.clients.admin.Admin
import org.apache.kafka.clients.admin.AdminClientConfig
import org.apache.kafka.clients.consumer.OffsetAndMetadata
import org.apache.kafka.common.TopicPartition
import org.junit.jupiter.api.AfterEach
import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.Assertions.assertTrue
import org.junit.jupiter.api.Test
import java.util.Collections
import java.util.Properties
import java.util.concurrent.ExecutionException
import java.util.concurrent.TimeUnit
import java.util.concurrent.atomic.AtomicInteger

/** A consumer handler written in Kotlin, over the real Kafka broker. */
class KafkaConsumerTest {
    private val prefix = TestSupport.newPrefix()
    private val topic = "${prefix}events".replace('_', '-')
    private val group = "${prefix}group".replace('_', '-')

    @AfterEach
    fun dropTables() = TestSupport.dropTables(prefix)

    @Test
    fun `the handler runs once per message, also after the group is rewound`() =
        runBlocking {
            val n = 20
            val kafka = Transports.kafka(TestSupport.kafkaBootstrap, createTopics = true)
            Outbox.open(TestSupport.databaseUrl, TestSupport.options(prefix), true).use { outbox ->
                TestSupport.sql("CREATE TABLE ${prefix}seen (id text PRIMARY KEY, key text, body text)")
                val ids =
                    outbox.transaction { tx ->
                        tx.enqueueBatch((0 until n).map { i -> jsonMessage(topic, """{"n":$i}""", key = "k${i % 4}", type = "Counted") })
                    }
                Relay.start(outbox, kafka, "{}").use { relay ->
                    TestSupport.waitFor("relayed to Kafka") { relay.stats().delivered == n.toLong() }
                }

                val calls = AtomicInteger()
                val types = Collections.synchronizedSet(mutableSetOf<String>())
                val handler =
                    messageHandler { message, tx ->
                        calls.incrementAndGet()
                        types.add(message.eventType)
                        tx.executeBlocking(
                            "INSERT INTO ${prefix}seen VALUES (\$1, \$2, \$3)",
                            listOf(SqlValue.Text(message.id), SqlValue.Text(message.key ?: ""), SqlValue.Text(message.text())),
                        )
                    }
                val config = """{"group": "$group", "poll_interval": "200ms"}"""

                Consumer.start(outbox, kafka, topic, config, handler).use { consumer ->
                    TestSupport.waitFor("every message processed", 60_000) { consumer.stats().processed == n.toLong() }
                    consumer.stop()
                    assertEquals(0L, consumer.stats().duplicates)
                }
                assertEquals(n, calls.get(), "one call per message")
                assertEquals(setOf("Counted"), types)
                assertEquals(ids.sorted(), TestSupport.column("${prefix}seen", "id").sorted())
                assertTrue(TestSupport.column("${prefix}seen", "body").all { it.startsWith("{\"n\":") })

                rewind(group, topic)

                Consumer.start(outbox, kafka, topic, config, handler).use { consumer ->
                    TestSupport.waitFor("every redelivery skipped by the inbox", 60_000) {
                        consumer.stats().duplicates == n.toLong()
                    }
                    consumer.stop()
                    assertEquals(0L, consumer.stats().processed)
                }
                assertEquals(n, calls.get(), "the handler did not run again for redeliveries")
                assertEquals(n.toLong(), TestSupport.count("${prefix}seen"))
            }
        }

    /** Commits offset 0 on every partition of [topic] for [group] (which must have no members). */
    private fun rewind(
        group: String,
        topic: String,
    ) {
        val props = Properties()
        props[AdminClientConfig.BOOTSTRAP_SERVERS_CONFIG] = TestSupport.kafkaBootstrap
        Admin.create(props).use { admin ->
            val partitions =
                admin
                    .describeTopics(listOf(topic))
                    .allTopicNames()
                    .get(10, TimeUnit.SECONDS)[topic]!!
                    .partitions()
            val zero = partitions.associate { TopicPartition(topic, it.partition()) to OffsetAndMetadata(0) }
            TestSupport.waitFor("group $group rewound", 20_000) {
                try {
                    admin.alterConsumerGroupOffsets(group, zero).all().get(10, TimeUnit.SECONDS)
                    true
                } catch (e: ExecutionException) {
                    System.err.println("rewind not possible yet: ${e.cause}")
                    Thread.sleep(200)
                    false
                }
            }
            val committed =
                admin.listConsumerGroupOffsets(group).partitionsToOffsetAndMetadata().get(10, TimeUnit.SECONDS)
            assertEquals(zero.keys, committed.filterValues { it.offset() == 0L }.keys, "rewind did not take: $committed")
        }
    }
}
