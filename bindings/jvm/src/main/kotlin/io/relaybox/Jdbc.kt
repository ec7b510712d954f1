@file:JvmName("JdbcExtensions")

package io.relaybox

import java.sql.Connection
import java.sql.PreparedStatement
import java.sql.SQLException
import java.sql.Types
import java.util.Collections
import java.util.WeakHashMap
import javax.sql.DataSource

/**
 * relaybox on plain JDBC: events written with the application's own
 * `java.sql.Connection`, inside the transaction the application has open,
 * so they commit or roll back with its business rows; and a consumer whose
 * handler receives a JDBC connection inside the transaction that holds the
 * message's inbox row.
 *
 * The statements come from the native library (the same INSERTs and
 * wake-up every binding runs); this object binds and runs them. Every call
 * blocks the calling thread and is usable from Java as `Jdbc.enqueue(...)`.
 *
 * ```java
 * connection.setAutoCommit(false);
 * try (PreparedStatement st = connection.prepareStatement("INSERT INTO orders (id) VALUES (?)")) { ... }
 * Jdbc.enqueue(outbox, connection, Relaybox.jsonMessage("orders", "{\"id\": 42}"));
 * connection.commit();
 * ```
 */
object Jdbc {
    /**
     * Identifies the database a connection reaches (its name and its
     * server's start time) and whether the outbox table (`?`, the prefixed
     * name) is visible on it.
     */
    private const val CHECK_SQL =
        "SELECT CAST(current_database() AS text), " +
            "CAST(CAST(EXTRACT(EPOCH FROM pg_postmaster_start_time()) * 1000000 AS bigint) AS text), " +
            "to_regclass(CAST(? AS text)) IS NOT NULL"

    /** What [CHECK_SQL] found on one connection. */
    private data class Identity(
        val database: String,
        val started: String,
        val hasOutbox: Boolean,
    )

    /** The identity of each outbox's database, looked up once per outbox. */
    private val outboxes: MutableMap<Outbox, Identity> = Collections.synchronizedMap(WeakHashMap())

    /**
     * The identity of each physical connection already checked, keyed by
     * the driver's connection (a pool's proxy unwrapped), so a pooled
     * connection is checked once however often it is lent out.
     */
    private val connections: MutableMap<Connection, Identity> = Collections.synchronizedMap(WeakHashMap())

    /**
     * Writes [message] with [connection], inside its open transaction
     * (`autoCommit` false), followed by the wake-up of the relays; the
     * event is delivered only if that transaction commits. Returns the
     * message id.
     *
     * @throws RelayboxException.InvalidTopic (and the other validation
     *   errors) for a bad message, [RelayboxException.InvalidConfig] for a
     *   connection in auto-commit mode or on another database than the
     *   outbox, [RelayboxException.Closed] for a closed connection,
     *   [RelayboxException.Schema] when the outbox table is not there; in
     *   each case nothing is written. [RelayboxException.Database] when the
     *   database refuses the statements.
     */
    @JvmStatic
    @Throws(RelayboxException::class)
    fun enqueue(
        outbox: Outbox,
        connection: Connection,
        message: MessageSpec,
    ): String = enqueueBatch(outbox, connection, listOf(message)).single()

    /**
     * Writes all of [messages] with [connection] inside its open
     * transaction: all or none. Every message is validated before anything
     * is written. Returns the ids, in order. Errors are those of [enqueue].
     */
    @JvmStatic
    @Throws(RelayboxException::class)
    fun enqueueBatch(
        outbox: Outbox,
        connection: Connection,
        messages: List<MessageSpec>,
    ): List<String> {
        requirePostgres(outbox)
        if (messages.isEmpty()) return emptyList()
        val statements = outbox.insertStatementsBlocking(messages, "question")
        checkConnection(outbox, connection)
        val ids = ArrayList<String>(messages.size)
        sql("writing to the outbox") {
            for (statement in statements) {
                connection.prepareStatement(statement.sql).use { st ->
                    bind(st, statement.params)
                    st.executeUpdate()
                }
                statement.wake?.let { wake -> connection.createStatement().use { it.execute(wake) } }
                ids.addAll(statement.messageIds)
            }
        }
        return ids
    }

    /**
     * Runs the inbox statement [inbox] of a host-mode delivery on
     * [connection] (inside the transaction that will hold the handler's
     * writes), after the checks of [enqueue] on [connection]. True when the
     * inbox row was inserted, i.e. the message is new for the group; false
     * when the group processed it before.
     */
    @JvmStatic
    @Throws(RelayboxException::class)
    fun insertInbox(
        outbox: Outbox,
        connection: Connection,
        inbox: HostStatement,
    ): Boolean {
        checkConnection(outbox, connection)
        return sql("writing the inbox row") {
            connection.prepareStatement(inbox.sql).use { st ->
                bind(st, inbox.params)
                st.executeUpdate() == 1
            }
        }
    }

    /**
     * A consumer of [topic] whose [handler] runs with a connection of
     * [dataSource] inside the transaction that holds the message's inbox
     * row: its JDBC writes commit with the row, or roll back with it when the
     * handler throws (the message is then retried, and dead-lettered after
     * `max_retries`; [RelayboxException.Rejected] dead-letters it at once).
     * A redelivered message the group already processed is not handed to
     * the handler. [transport] and [configJson] are those of
     * [Consumer.start]; [dataSource] must reach the outbox's database.
     */
    @JvmStatic
    @Throws(RelayboxException::class)
    fun consumer(
        outbox: Outbox,
        dataSource: DataSource,
        transport: String,
        topic: String,
        configJson: String,
        handler: JdbcHandler,
    ): Consumer {
        requirePostgres(outbox)
        return Consumer.startHost(
            outbox,
            transport,
            topic,
            configJson,
            "question",
            hostHandler { message, inbox ->
                dataSource.connection.use { connection ->
                    connection.autoCommit = false
                    try {
                        if (!insertInbox(outbox, connection, inbox)) {
                            connection.rollback()
                            return@hostHandler HostResult.Duplicate
                        }
                        handler.handle(message, connection)
                        connection.commit()
                        HostResult.Processed
                    } catch (e: Throwable) {
                        runCatching { connection.rollback() }.exceptionOrNull()?.let(e::addSuppressed)
                        throw e
                    } finally {
                        runCatching { connection.autoCommit = true }
                    }
                }
            },
        )
    }

    /** Binds the parameters of a statement from the native library. */
    private fun bind(
        st: PreparedStatement,
        params: List<SqlValue>,
    ) {
        params.forEachIndexed { i, value ->
            val n = i + 1
            when (value) {
                is SqlValue.Null -> st.setNull(n, Types.VARCHAR)
                is SqlValue.Bool -> st.setBoolean(n, value.value)
                is SqlValue.Int -> st.setLong(n, value.value)
                is SqlValue.Float -> st.setDouble(n, value.value)
                is SqlValue.Text -> st.setString(n, value.value)
                is SqlValue.Bytes -> st.setBytes(n, value.value)
                is SqlValue.Json -> st.setString(n, value.json)
                is SqlValue.Uuid -> st.setObject(n, java.util.UUID.fromString(value.value))
                is SqlValue.Timestamp -> st.setObject(n, java.time.OffsetDateTime.ofInstant(value.value, java.time.ZoneOffset.UTC))
            }
        }
    }

    private fun requirePostgres(outbox: Outbox) {
        val dialect = outbox.dialect()
        if (dialect != "postgres") {
            throw RelayboxException.InvalidConfig(
                "relaybox JDBC integration writes into a PostgreSQL outbox; this outbox is on $dialect",
                false,
                null,
            )
        }
    }

    /** Checks that [connection] is open, inside a transaction, on the outbox's database. */
    private fun checkConnection(
        outbox: Outbox,
        connection: Connection,
    ) {
        val closed = sql("checking the connection") { connection.isClosed }
        if (closed) throw RelayboxException.Closed("the JDBC connection is closed", false, null)
        val autoCommit = sql("checking the connection") { connection.autoCommit }
        if (autoCommit) {
            throw RelayboxException.InvalidConfig(
                "the JDBC connection is in auto-commit mode, so the event would not share a transaction " +
                    "with your writes: call setAutoCommit(false) first (or enqueue inside @Transactional)",
                false,
                null,
            )
        }
        val table = outbox.tablePrefix() + "outbox"
        val physical = physical(connection)
        // Only a connection that sees the outbox is remembered: its search_path may change.
        val actual = connections[physical] ?: identify(connection, table).also { if (it.hasOutbox) connections[physical] = it }
        var expected = outboxes[outbox] ?: outboxIdentity(outbox, table).also { outboxes[outbox] = it }
        if (!sameDatabase(actual, expected)) {
            // The server may have restarted since the outbox's identity was cached: look again.
            expected = outboxIdentity(outbox, table).also { outboxes[outbox] = it }
        }
        if (!sameDatabase(actual, expected)) {
            throw RelayboxException.InvalidConfig(
                "the JDBC connection is on database \"${actual.database}\" of another server or name than " +
                    "the outbox's (\"${expected.database}\"): the event must be written where the outbox is",
                false,
                null,
            )
        }
        if (!actual.hasOutbox) {
            throw RelayboxException.Schema(
                "the table $table is not visible on the JDBC connection (another schema or search_path, " +
                    "or the schema was not migrated)",
                false,
                null,
            )
        }
    }

    private fun sameDatabase(
        a: Identity,
        b: Identity,
    ): Boolean = a.database == b.database && a.started == b.started

    private fun physical(connection: Connection): Connection =
        try {
            if (connection.isWrapperFor(Connection::class.java)) connection.unwrap(Connection::class.java) else connection
        } catch (e: SQLException) {
            connection
        }

    private fun identify(
        connection: Connection,
        table: String,
    ): Identity =
        sql("checking the connection's database") {
            connection.prepareStatement(CHECK_SQL).use { st ->
                st.setString(1, table)
                st.executeQuery().use { r ->
                    r.next()
                    Identity(r.getString(1), r.getString(2), r.getBoolean(3))
                }
            }
        }

    private fun outboxIdentity(
        outbox: Outbox,
        table: String,
    ): Identity =
        outbox.beginBlocking().use { tx ->
            val row = tx.queryBlocking(CHECK_SQL.replace("?", "$1"), listOf(SqlValue.Text(table))).single()
            tx.rollbackBlocking()
            Identity(
                (row.values[0] as SqlValue.Text).value,
                (row.values[1] as SqlValue.Text).value,
                (row.values[2] as SqlValue.Bool).value,
            )
        }

    /** Runs JDBC calls, turning a `SQLException` into [RelayboxException.Database]. */
    private inline fun <T> sql(
        what: String,
        block: () -> T,
    ): T =
        try {
            block()
        } catch (e: SQLException) {
            throw RelayboxException.Database(
                "$what failed: ${e.message} (SQLState ${e.sqlState})",
                e.sqlState?.startsWith("08") == true,
                null,
            )
        }
}

/** The handler of a [Jdbc.consumer]: may throw any exception (checked ones too, from Java). */
fun interface JdbcHandler {
    /** Handles [message] with [connection], inside the transaction holding its inbox row. */
    @Throws(Exception::class)
    fun handle(
        message: Message,
        connection: Connection,
    )
}

/**
 * Kotlin form of [Jdbc.enqueue]: writes [message] with [connection], inside
 * its open transaction; returns the message id.
 */
@Throws(RelayboxException::class)
fun Outbox.enqueue(
    connection: Connection,
    message: MessageSpec,
): String = Jdbc.enqueue(this, connection, message)

/**
 * Kotlin form of [Jdbc.enqueueBatch]: writes all of [messages] with
 * [connection], inside its open transaction; returns their ids in order.
 */
@Throws(RelayboxException::class)
fun Outbox.enqueueBatch(
    connection: Connection,
    messages: List<MessageSpec>,
): List<String> = Jdbc.enqueueBatch(this, connection, messages)
