package io.relaybox

import org.junit.jupiter.api.Assertions.fail
import java.net.Socket
import java.net.URI
import java.sql.Connection
import java.sql.DriverManager
import java.util.UUID

/**
 * The real PostgreSQL and Kafka of `dev/services`, a table prefix of each
 * test's own, and a polling helper. Nothing is skipped: without the services
 * the tests fail and say how to start them.
 */
object TestSupport {
    private const val START_HINT = "start them with `dev/services start && eval \"\$(dev/services env)\"`"

    private fun requiredEnv(name: String): String {
        val value = System.getenv(name)?.trim().orEmpty()
        if (value.isEmpty()) fail<Unit>("$name is not set: the JVM tests use the real services; $START_HINT")
        return value
    }

    /** URL of the PostgreSQL test database. */
    val databaseUrl: String by lazy { requiredEnv("RELAYBOX_TEST_DATABASE_URL") }

    /** Bootstrap servers of the real Kafka broker; fails when none answers. */
    val kafkaBootstrap: String by lazy {
        val servers = requiredEnv("RELAYBOX_KAFKA_BOOTSTRAP")
        val first = servers.split(",")[0]
        val host = first.substringBeforeLast(":")
        val port = first.substringAfterLast(":").toInt()
        try {
            Socket(host, port).close()
        } catch (e: java.io.IOException) {
            fail<Unit>("no Kafka broker answers at $servers ($e); $START_HINT")
        }
        servers
    }

    /** A fresh table prefix (and name stem for topics and groups). */
    fun newPrefix(): String = "jvm_${UUID.randomUUID().toString().replace("-", "").take(10)}_"

    /** Store options selecting [prefix]. */
    fun options(prefix: String): String = """{"table_prefix": "$prefix"}"""

    /** A JDBC connection to the test database, as an independent observer. */
    fun jdbc(): Connection = jdbc(databaseUrl)

    /** A JDBC connection to the database of the `postgres://` URL [url]. */
    @JvmStatic
    fun jdbc(url: String): Connection {
        val uri = URI(url)
        val userInfo = uri.userInfo.orEmpty()
        val props = java.util.Properties()
        if (userInfo.isNotEmpty()) {
            props["user"] = userInfo.substringBefore(":")
            if (":" in userInfo) props["password"] = userInfo.substringAfter(":")
        }
        val port = if (uri.port > 0) uri.port else 5432
        return DriverManager.getConnection("jdbc:postgresql://${uri.host}:$port${uri.path}", props)
    }

    /** A JDBC `DataSource` of the database of [url], the test database by default (no pool: a connection per call). */
    @JvmStatic
    @JvmOverloads
    fun dataSource(url: String = databaseUrl): javax.sql.DataSource =
        object : org.postgresql.ds.PGSimpleDataSource() {
            override fun getConnection(): Connection = jdbc(url)
        }

    /** Rows in [table]. */
    fun count(table: String): Long =
        jdbc().use { c ->
            c.createStatement().use { s ->
                s.executeQuery("SELECT count(*) FROM \"$table\"").use { r ->
                    r.next()
                    r.getLong(1)
                }
            }
        }

    /** The text values of [column] in [table]. */
    fun column(
        table: String,
        column: String,
    ): List<String> =
        jdbc().use { c ->
            c.createStatement().use { s ->
                s.executeQuery("SELECT $column FROM \"$table\"").use { r ->
                    buildList { while (r.next()) add(r.getString(1)) }
                }
            }
        }

    /** Runs [sql] on its own connection. */
    fun sql(sql: String) {
        jdbc().use { c -> c.createStatement().use { it.execute(sql) } }
    }

    /** Drops every table whose name starts with [prefix]. */
    fun dropTables(prefix: String) {
        jdbc().use { c ->
            val tables =
                c
                    .prepareStatement(
                        "SELECT tablename FROM pg_tables WHERE schemaname = current_schema() AND tablename LIKE ?",
                    ).use { st ->
                        st.setString(1, "$prefix%")
                        st.executeQuery().use { r -> buildList { while (r.next()) add(r.getString(1)) } }
                    }
            c.createStatement().use { s -> tables.forEach { s.execute("DROP TABLE IF EXISTS \"$it\" CASCADE") } }
        }
    }

    /** Polls [probe] until it returns true; fails with [what] after [timeoutMillis]. */
    fun waitFor(
        what: String,
        timeoutMillis: Long = 30_000,
        probe: () -> Boolean,
    ) {
        val deadline = System.nanoTime() + timeoutMillis * 1_000_000
        while (System.nanoTime() < deadline) {
            if (probe()) return
            Thread.sleep(20)
        }
        fail<Unit>("timed out after ${timeoutMillis}ms waiting for $what")
    }
}
