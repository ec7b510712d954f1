package io.relaybox;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.sql.Connection;
import java.sql.PreparedStatement;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.atomic.AtomicBoolean;
import java.util.concurrent.atomic.AtomicInteger;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.Test;

/** The plain JDBC path from Java: events written in the application's own JDBC transaction. */
class JdbcApiTest {
    private final String prefix = TestSupport.INSTANCE.newPrefix();
    private final String topic = (prefix + "orders").replace('_', '-');

    @AfterEach
    void dropTables() {
        TestSupport.INSTANCE.dropTables(prefix);
    }

    private Outbox open() throws Exception {
        Outbox outbox = Outbox.Companion.openBlocking(
                TestSupport.INSTANCE.getDatabaseUrl(), TestSupport.INSTANCE.options(prefix), true);
        TestSupport.INSTANCE.sql("CREATE TABLE " + prefix + "orders (id int PRIMARY KEY)");
        TestSupport.INSTANCE.sql("CREATE TABLE " + prefix + "seen (id text PRIMARY KEY)");
        return outbox;
    }

    private void insertOrder(Connection connection, int id) throws Exception {
        try (PreparedStatement st = connection.prepareStatement("INSERT INTO " + prefix + "orders VALUES (?)")) {
            st.setInt(1, id);
            st.executeUpdate();
        }
    }

    private long outboxRows() {
        return TestSupport.INSTANCE.count(prefix + "outbox");
    }

    @Test
    void eventsCommitAndRollBackWithTheJdbcTransactionAndAreConsumedOnce() throws Exception {
        try (Outbox outbox = open(); Connection connection = TestSupport.INSTANCE.jdbc()) {
            connection.setAutoCommit(false);
            insertOrder(connection, 1);
            Jdbc.enqueue(outbox, connection, Relaybox.jsonMessage(topic, "{\"order\": 1}", "o1", "OrderPlaced"));
            connection.rollback();
            assertEquals(0L, TestSupport.INSTANCE.count(prefix + "orders"));
            assertEquals(0L, outboxRows());

            insertOrder(connection, 2);
            List<String> ids = Jdbc.enqueueBatch(outbox, connection, List.of(
                    Relaybox.jsonMessage(topic, "{\"order\": 2}", "o2", "OrderPlaced"),
                    Relaybox.textMessage(topic, "order 2 paid", "o2", "OrderPaid")));
            // Not visible to others before the commit.
            assertEquals(0L, outboxRows());
            connection.commit();
            assertEquals(1L, TestSupport.INSTANCE.count(prefix + "orders"));
            assertEquals(2L, outbox.pendingCountBlocking());

            AtomicInteger calls = new AtomicInteger();
            AtomicBoolean failedOnce = new AtomicBoolean();
            List<String> order = java.util.Collections.synchronizedList(new ArrayList<>());
            String config = "{\"group\": \"" + prefix + "g\", \"retry_delay\": \"10ms\", \"poll_interval\": \"100ms\"}";
            try (Relay relay = Relay.Companion.start(outbox, Transports.database(), "{}");
                 Consumer consumer = Jdbc.consumer(outbox, TestSupport.dataSource(), Transports.database(), topic, config,
                         (message, jdbc) -> {
                             calls.incrementAndGet();
                             try (PreparedStatement st = jdbc.prepareStatement("INSERT INTO " + prefix + "seen VALUES (?)")) {
                                 st.setString(1, message.getId());
                                 st.executeUpdate();
                             }
                             // The first attempt fails after its write: that write rolls back with the inbox row.
                             if (failedOnce.compareAndSet(false, true)) {
                                 throw new java.io.IOException("not yet");
                             }
                             order.add(message.getEventType());
                         })) {
                TestSupport.INSTANCE.waitFor("both consumed", 30_000, () -> consumer.stats().getProcessed() == 2L);
                consumer.stopBlocking();
                relay.stopBlocking();
                assertEquals(1L, consumer.stats().getRetried());
            }
            assertEquals(3, calls.get());
            assertEquals(List.of("OrderPlaced", "OrderPaid"), order);

            // A consumer that dies after its commits but before its position is
            // saved gets the messages again: the inbox statement inserts nothing,
            // and the handler is not called.
            TestSupport.INSTANCE.sql("DELETE FROM " + prefix + "positions WHERE consumer_group = '" + prefix + "g'");
            try (Consumer again = Jdbc.consumer(outbox, TestSupport.dataSource(), Transports.database(), topic, config,
                    (message, jdbc) -> calls.incrementAndGet())) {
                TestSupport.INSTANCE.waitFor("redeliveries skipped", 30_000, () -> again.stats().getDuplicates() == 2L);
                again.stopBlocking();
                assertEquals(0L, again.stats().getProcessed());
            }
            assertEquals(3, calls.get());
            List<String> seen = new ArrayList<>(TestSupport.INSTANCE.column(prefix + "seen", "id"));
            java.util.Collections.sort(seen);
            List<String> expected = new ArrayList<>(ids);
            java.util.Collections.sort(expected);
            assertEquals(expected, seen);
        }
    }

    @Test
    void badConnectionsAndMessagesAreTypedErrorsAndWriteNothing() throws Exception {
        try (Outbox outbox = open()) {
            MessageSpec message = Relaybox.jsonMessage(topic, "{}");

            try (Connection autoCommit = TestSupport.INSTANCE.jdbc()) {
                RelayboxException.InvalidConfig e = assertThrows(RelayboxException.InvalidConfig.class,
                        () -> Jdbc.enqueue(outbox, autoCommit, message));
                assertTrue(e.getMessage().contains("auto-commit"), e.getMessage());
            }

            Connection closed = TestSupport.INSTANCE.jdbc();
            closed.close();
            assertThrows(RelayboxException.Closed.class, () -> Jdbc.enqueue(outbox, closed, message));

            String otherDatabase = TestSupport.INSTANCE.getDatabaseUrl().replaceAll("/[^/?]+(\\?.*)?$", "/postgres");
            try (Connection other = TestSupport.jdbc(otherDatabase)) {
                other.setAutoCommit(false);
                RelayboxException.InvalidConfig e = assertThrows(RelayboxException.InvalidConfig.class,
                        () -> Jdbc.enqueue(outbox, other, message));
                assertTrue(e.getMessage().contains("\"postgres\""), e.getMessage());
                other.rollback();
            }

            try (Connection hidden = TestSupport.INSTANCE.jdbc()) {
                hidden.setAutoCommit(false);
                try (java.sql.Statement st = hidden.createStatement()) {
                    st.execute("SET LOCAL search_path TO pg_catalog");
                }
                RelayboxException.Schema e = assertThrows(RelayboxException.Schema.class,
                        () -> Jdbc.enqueue(outbox, hidden, message));
                assertTrue(e.getMessage().contains(prefix + "outbox"), e.getMessage());
                hidden.rollback();
            }

            try (Outbox sqlite = Outbox.Companion.openBlocking("sqlite::memory:", null, true);
                 Connection connection = TestSupport.INSTANCE.jdbc()) {
                connection.setAutoCommit(false);
                RelayboxException.InvalidConfig e = assertThrows(RelayboxException.InvalidConfig.class,
                        () -> Jdbc.enqueue(sqlite, connection, message));
                assertTrue(e.getMessage().contains("PostgreSQL"), e.getMessage());
                connection.rollback();
            }

            try (Connection connection = TestSupport.INSTANCE.jdbc()) {
                connection.setAutoCommit(false);
                insertOrder(connection, 7);
                RelayboxException.InvalidTopic e = assertThrows(RelayboxException.InvalidTopic.class,
                        () -> Jdbc.enqueueBatch(outbox, connection, List.of(message, Relaybox.textMessage("no spaces", "x"))));
                assertEquals("invalid_topic", Relaybox.getCode(e));
                // A refused message leaves the caller's transaction usable.
                connection.commit();
            }
            assertEquals(1L, TestSupport.INSTANCE.count(prefix + "orders"));
            assertEquals(0L, outboxRows());
        }
    }

    @Test
    void aConsumerWhoseDataSourceIsOnAnotherDatabaseDeadLettersWithoutCallingTheHandler() throws Exception {
        try (Outbox outbox = open(); Connection connection = TestSupport.INSTANCE.jdbc()) {
            connection.setAutoCommit(false);
            String id = Jdbc.enqueue(outbox, connection, Relaybox.textMessage(topic, "lost?"));
            connection.commit();

            String otherDatabase = TestSupport.INSTANCE.getDatabaseUrl().replaceAll("/[^/?]+(\\?.*)?$", "/postgres");
            javax.sql.DataSource elsewhere = TestSupport.dataSource(otherDatabase);
            AtomicInteger calls = new AtomicInteger();
            String config = "{\"group\": \"" + prefix + "g\", \"max_retries\": 0, \"poll_interval\": \"100ms\"}";
            try (Relay relay = Relay.Companion.start(outbox, Transports.database(), "{}");
                 Consumer consumer = Jdbc.consumer(outbox, elsewhere, Transports.database(), topic, config,
                         (message, jdbc) -> calls.incrementAndGet())) {
                TestSupport.INSTANCE.waitFor("dead-lettered", 30_000, () -> consumer.stats().getDeadLettered() == 1L);
                consumer.stopBlocking();
                relay.stopBlocking();
            }
            assertEquals(0, calls.get());
            assertEquals(List.of(id), TestSupport.INSTANCE.column(prefix + "dead_letters", "CAST(id AS text)"));
            String error = TestSupport.INSTANCE.column(prefix + "dead_letters", "last_error").get(0);
            assertTrue(error.contains("another server or name"), error);
        }
    }
}
