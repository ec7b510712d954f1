package io.relaybox

import kotlinx.coroutines.runBlocking
import org.junit.jupiter.api.AfterEach
import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.Test
import java.util.concurrent.atomic.AtomicBoolean
import java.util.concurrent.atomic.AtomicInteger

/** A Kotlin `suspend` handler over the database transport. */
class ConsumerTest {
    private val prefix = TestSupport.newPrefix()

    @AfterEach
    fun dropTables() = TestSupport.dropTables(prefix)

    @Test
    fun `a suspend handler writes in the consumer transaction and is retried after a failure`() =
        runBlocking {
            Outbox.open(TestSupport.databaseUrl, TestSupport.options(prefix), true).use { outbox ->
                val topic = "${prefix}tasks".replace('_', '-')
                TestSupport.sql("CREATE TABLE ${prefix}done (id text PRIMARY KEY)")
                val ids =
                    outbox.transaction { tx ->
                        (1..3).map { tx.enqueue(textMessage(topic, "task $it", key = "k$it")) }
                    }
                Relay.start(outbox, Transports.database(), "{}").use { relay ->
                    TestSupport.waitFor("relayed") { relay.stats().delivered == 3L }
                }
                val calls = AtomicInteger()
                val failedOnce = AtomicBoolean()
                val handler =
                    suspendHandler { message, tx ->
                        calls.incrementAndGet()
                        tx.execute("INSERT INTO ${prefix}done VALUES (\$1)", listOf(SqlValue.Text(message.id)))
                        // The first attempt fails after its write: that write is rolled back.
                        if (message.text() == "task 2" && failedOnce.compareAndSet(false, true)) error("not yet")
                    }
                val config = """{"group": "${prefix}g", "retry_delay": "10ms", "poll_interval": "100ms"}"""
                Consumer.startSuspending(outbox, Transports.database(), topic, config, handler).use { consumer ->
                    TestSupport.waitFor("all processed") { consumer.stats().processed == 3L }
                    consumer.stop()
                    assertEquals(1L, consumer.stats().retried)
                }
                assertEquals(4, calls.get())
                assertEquals(ids.sorted(), TestSupport.column("${prefix}done", "id").sorted())
            }
        }
}
