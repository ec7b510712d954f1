package io.relaybox

import com.fasterxml.jackson.databind.JsonNode
import com.fasterxml.jackson.databind.ObjectMapper
import com.fasterxml.jackson.databind.node.ObjectNode
import kotlinx.coroutines.runBlocking
import org.junit.jupiter.api.AfterEach
import org.junit.jupiter.api.Assertions.assertArrayEquals
import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.Assertions.assertTrue
import org.junit.jupiter.api.Test
import java.io.File
import java.time.Duration
import java.time.Instant
import java.util.Base64
import java.util.concurrent.ConcurrentHashMap

/**
 * The cross-language fixtures of `tests/fixtures`, the files every binding
 * reads. The JVM binding has no canonical JSON and no partition function, so
 * the envelopes are checked field by field after a round trip through the
 * database transport, and `partitions.json` is not read here.
 */
class FixturesTest {
    private val prefix = TestSupport.newPrefix()
    private val mapper = ObjectMapper()

    @AfterEach
    fun dropTables() = TestSupport.dropTables(prefix)

    /** `tests/fixtures` of the repository (the tests run in bindings/jvm). */
    private val fixtures: File =
        File(System.getProperty("basedir") ?: ".", "../../tests/fixtures").canonicalFile

    private fun instant(node: JsonNode): Instant = Instant.parse(node.asText())

    /**
     * The spec of a canonical message, with its id. A spec has no creation
     * time (enqueue takes now), so a message delivered later than it was
     * created keeps that distance from now, and one delivered at creation has
     * no delivery time.
     */
    private fun specOf(fields: JsonNode): MessageSpec {
        val created = instant(fields["created_at"])
        val available = instant(fields["available_at"])
        return MessageSpec(
            topic = fields["topic"].asText(),
            key = fields["key"].takeUnless { it.isNull }?.asText(),
            eventType = fields["type"].asText(),
            payloadBytes = Base64.getDecoder().decode(fields["payload"].asText()),
            contentType = fields["content_type"].asText(),
            headers = fields["headers"].properties().associate { (name, value) -> name to value.asText() },
            availableAt = if (available == created) null else Instant.now().plus(Duration.between(created, available)),
            id = fields["id"].asText(),
        )
    }

    @Test
    fun `the envelopes survive the database transport`() =
        runBlocking {
            val files = fixtures.resolve("envelopes").listFiles { f -> f.name.endsWith(".json") }!!.sortedBy { it.name }
            assertTrue(files.size >= 4, "envelopes in $fixtures")
            // Delivered now: the spec has no creation time to put a delay after.
            val expected = files.map { mapper.readTree(it) as ObjectNode }
            expected.forEach { it.put("available_at", it["created_at"].asText()) }
            Outbox.open(TestSupport.databaseUrl, TestSupport.options(prefix), true).use { outbox ->
                outbox.transaction { tx -> expected.forEach { tx.enqueue(specOf(it)) } }
                val got = ConcurrentHashMap<String, Message>()
                val handler = messageHandler { message, _ -> got[message.id] = message }
                Relay.start(outbox, Transports.database(), """{"poll_interval": "50ms"}""").use {
                    val config = """{"group": "fixtures", "poll_interval": "50ms"}"""
                    val consumers =
                        expected.map { it["topic"].asText() }.distinct().map { topic ->
                            Consumer.start(outbox, Transports.database(), topic, config, handler)
                        }
                    TestSupport.waitFor("every envelope consumed") { got.size == expected.size }
                    consumers.forEach { it.close() }
                }
                for (fields in expected) {
                    val id = fields["id"].asText()
                    val message = got[id] ?: error("envelope $id was not consumed")
                    assertEquals(fields["topic"].asText(), message.topic, id)
                    assertEquals(fields["key"].takeUnless { it.isNull }?.asText(), message.key, id)
                    assertEquals(fields["type"].asText(), message.eventType, id)
                    assertArrayEquals(Base64.getDecoder().decode(fields["payload"].asText()), message.payload, id)
                    assertEquals(fields["content_type"].asText(), message.contentType, id)
                    assertEquals(fields["headers"].properties().associate { (k, v) -> k to v.asText() }, message.headers, id)
                    assertEquals(message.createdAt, message.availableAt, id)
                }
            }
        }

    @Test
    fun `every invalid message is rejected with its code and writes nothing`() =
        runBlocking {
            val cases = mapper.readTree(fixtures.resolve("invalid_messages.json"))
            assertTrue(cases.size() >= 10)
            assertTrue(cases.any { it["name"].asText() == "available_at before created_at" })
            val limits = cases.map { it["max_payload_bytes"]?.asLong() }.distinct()
            val outboxes =
                limits.withIndex().associate { (n, limit) ->
                    val options =
                        if (limit == null) {
                            """{"table_prefix": "$prefix$n"}"""
                        } else {
                            """{"table_prefix": "$prefix$n", "max_payload_bytes": $limit}"""
                        }
                    limit to Outbox.open(TestSupport.databaseUrl, options, true)
                }
            try {
                for (case in cases) {
                    val name = case["name"].asText()
                    val outbox = outboxes.getValue(case["max_payload_bytes"]?.asLong())
                    val error =
                        try {
                            outbox.transaction { tx -> tx.enqueue(specOf(case["message"])) }
                            null
                        } catch (e: RelayboxException) {
                            e
                        }
                    assertEquals(case["error_code"].asText(), error?.code, "$name: $error")
                }
                for (outbox in outboxes.values) assertEquals(0L, outbox.pendingCount())
            } finally {
                outboxes.values.forEach { it.close() }
            }
        }
}
