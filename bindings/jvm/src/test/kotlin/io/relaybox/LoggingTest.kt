package io.relaybox

import ch.qos.logback.classic.spi.ILoggingEvent
import ch.qos.logback.core.read.ListAppender
import kotlinx.coroutines.runBlocking
import org.junit.jupiter.api.AfterEach
import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.Assertions.assertFalse
import org.junit.jupiter.api.Assertions.assertThrows
import org.junit.jupiter.api.Assertions.assertTrue
import org.junit.jupiter.api.BeforeEach
import org.junit.jupiter.api.Test
import org.slf4j.LoggerFactory
import ch.qos.logback.classic.Level as LogbackLevel
import ch.qos.logback.classic.Logger as LogbackLogger

/** The core's log records reach SLF4J (logback here) with their level and fields. */
class LoggingTest {
    private val prefix = TestSupport.newPrefix()
    private val root = LoggerFactory.getLogger("relaybox") as LogbackLogger
    private val appender = ListAppender<ILoggingEvent>()

    @BeforeEach
    fun capture() {
        appender.start()
        root.addAppender(appender)
        root.level = LogbackLevel.INFO
    }

    @AfterEach
    fun release() {
        Slf4jLogging.uninstall()
        root.detachAppender(appender)
        root.level = null
        TestSupport.dropTables(prefix)
    }

    private fun events(): List<ILoggingEvent> = synchronized(appender.list) { appender.list.toList() }

    private fun find(
        what: String,
        predicate: (ILoggingEvent) -> Boolean,
    ): ILoggingEvent {
        TestSupport.waitFor(what) { events().any(predicate) }
        return events().first(predicate)
    }

    private fun ILoggingEvent.pairs(): Map<String, Any?> = keyValuePairs.orEmpty().associate { it.key to it.value }

    @Test
    fun `a dead-lettered message's warning reaches SLF4J with its fields`() =
        runBlocking {
            Slf4jLogging.install()
            Outbox.open(TestSupport.databaseUrl, TestSupport.options(prefix), true).use { outbox ->
                val topic = "${prefix}log".replace('_', '-')
                val id = outbox.transaction { tx -> tx.enqueue(textMessage(topic, "unwanted", key = "k")) }
                Relay.start(outbox, Transports.database(), "{}").use { relay ->
                    TestSupport.waitFor("relayed") { relay.stats().delivered == 1L }
                }
                val handler =
                    messageHandler { message, _ ->
                        throw RelayboxException.Rejected("not for us", false, message.id)
                    }
                val config = """{"group": "${prefix}g", "poll_interval": "100ms"}"""
                Consumer.start(outbox, Transports.database(), topic, config, handler).use { consumer ->
                    val event = find("the dead-letter warning") { it.message.startsWith("relaybox message rejected by its handler") }
                    consumer.stop()
                    assertEquals(LogbackLevel.WARN, event.level)
                    assertEquals("relaybox.consumer", event.loggerName)
                    val pairs = event.pairs()
                    assertEquals(id, pairs["id"])
                    assertEquals("${prefix}g", pairs["group"])
                    assertTrue((pairs["error"] as String).contains("not for us"), pairs.toString())
                    assertEquals(
                        "relaybox message rejected by its handler; dead-lettered id=$id group=${prefix}g error=${pairs["error"]}",
                        event.formattedMessage,
                    )
                }
                // The relay's start arrived at INFO, the level of the `relaybox` logger at install().
                val started = find("the relay's start") { it.message.startsWith("relaybox relay started") }
                assertEquals(LogbackLevel.INFO, started.level)
                assertEquals("relaybox.relay", started.loggerName)
            }
        }

    @Test
    fun `levels filter at install and at the logger, and every field arrives`() {
        Slf4jLogging.install("warn")
        logForTests("info", "not at warn", 1u)
        logForTests("warn", "at warn", 1u)
        val event = find("'at warn'") { it.message.startsWith("at warn") }
        assertEquals("relaybox.testing", event.loggerName)
        assertEquals("at warn n=0 flag=true ratio=0.5 text=two words", event.formattedMessage)
        val pairs = event.pairs()
        assertEquals(listOf("n", "flag", "ratio", "text", "relaybox.thread"), event.keyValuePairs.map { it.key })
        assertEquals("0", pairs["n"])
        assertEquals("two words", pairs["text"])
        assertFalse(events().any { it.message.startsWith("not at warn") })

        // A logger set to ERROR drops the WARN records the core forwards.
        (LoggerFactory.getLogger("relaybox.testing") as LogbackLogger).level = LogbackLevel.ERROR
        try {
            logForTests("warn", "below the logger", 1u)
            logForTests("error", "at the logger", 1u)
            find("'at the logger'") { it.message.startsWith("at the logger") }
            assertFalse(events().any { it.message.startsWith("below the logger") })
        } finally {
            (LoggerFactory.getLogger("relaybox.testing") as LogbackLogger).level = null
        }

        assertThrows(RelayboxException.InvalidConfig::class.java) { Slf4jLogging.install("loud") }
        assertEquals("relaybox.deps.librdkafka", Slf4jLogging.loggerName("librdkafka"))
    }
}
