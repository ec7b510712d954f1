package io.relaybox

import org.junit.jupiter.api.AfterEach
import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.Test

/** The JDBC path from Kotlin: `outbox.enqueue(connection, message)` in a JDBC transaction. */
class JdbcTest {
    private val prefix = TestSupport.newPrefix()

    @AfterEach
    fun dropTables() = TestSupport.dropTables(prefix)

    @Test
    fun `events written with a JDBC connection follow its transaction`() {
        Outbox.openBlocking(TestSupport.databaseUrl, TestSupport.options(prefix), true).use { outbox ->
            val topic = "${prefix}kt".replace('_', '-')
            TestSupport.jdbc().use { connection ->
                connection.autoCommit = false
                outbox.enqueueBatch(connection, (1..3).map { textMessage(topic, "event $it", key = "k") })
                connection.rollback()
                assertEquals(0L, outbox.pendingCountBlocking())

                val id = outbox.enqueue(connection, jsonMessage(topic, """{"n": 1}""", type = "Counted"))
                // More than one INSERT's worth of messages: several statements, all in this transaction.
                val more = outbox.enqueueBatch(connection, (1..1_500).map { textMessage(topic, "bulk $it") })
                connection.commit()
                assertEquals(1_501L, outbox.pendingCountBlocking())
                assertEquals(1_500, more.toSet().size)
                val counted =
                    connection.prepareStatement("SELECT CAST(id AS text) FROM ${prefix}outbox WHERE type = 'Counted'").use { st ->
                        st.executeQuery().use { r -> buildList { while (r.next()) add(r.getString(1)) } }
                    }
                assertEquals(listOf(id), counted)
            }
        }
    }
}
