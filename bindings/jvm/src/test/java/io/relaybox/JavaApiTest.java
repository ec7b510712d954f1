package io.relaybox;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.util.List;
import java.util.concurrent.atomic.AtomicInteger;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.Test;

/** The same classes from plain Java, through the blocking variants. */
class JavaApiTest {
    private final String prefix = TestSupport.INSTANCE.newPrefix();

    @AfterEach
    void dropTables() {
        TestSupport.INSTANCE.dropTables(prefix);
    }

    @Test
    void enqueueRelayAndConsumeFromJava() throws Exception {
        String topic = (prefix + "java").replace('_', '-');
        try (Outbox outbox = Outbox.Companion.openBlocking(
                TestSupport.INSTANCE.getDatabaseUrl(), TestSupport.INSTANCE.options(prefix), true)) {
            TestSupport.INSTANCE.sql("CREATE TABLE " + prefix + "seen (id text PRIMARY KEY, body text)");

            String id = Relaybox.transactionBlocking(outbox, tx ->
                    tx.enqueueBlocking(Relaybox.jsonMessage(topic, "{\"hello\":\"java\"}", "k1", "Greeted")));

            RelayboxException.InvalidTopic bad = assertThrows(RelayboxException.InvalidTopic.class, () ->
                    Relaybox.transactionBlocking(outbox, tx -> tx.enqueueBlocking(Relaybox.textMessage("no spaces", "x"))));
            assertEquals("invalid_topic", Relaybox.getCode(bad));
            assertEquals(1L, outbox.pendingCountBlocking());

            AtomicInteger calls = new AtomicInteger();
            MessageHandler handler = Relaybox.messageHandler((message, tx) -> {
                calls.incrementAndGet();
                tx.executeBlocking("INSERT INTO " + prefix + "seen VALUES ($1, $2)",
                        List.of(new SqlValue.Text(message.getId()), new SqlValue.Text(Relaybox.text(message))));
            });
            try (Relay relay = Relay.Companion.start(outbox, Transports.database(), "{}");
                 Consumer consumer = Consumer.Companion.start(
                         outbox, Transports.database(), topic, "{\"group\": \"java\"}", handler)) {
                TestSupport.INSTANCE.waitFor("consumed", 30_000, () -> consumer.stats().getProcessed() == 1L);
                consumer.stopBlocking();
                relay.stopBlocking();
            }
            assertEquals(1, calls.get());
            assertEquals(List.of(id), TestSupport.INSTANCE.column(prefix + "seen", "id"));
            assertEquals(List.of("{\"hello\":\"java\"}"), TestSupport.INSTANCE.column(prefix + "seen", "body"));

            try (Transaction tx = outbox.beginBlocking()) {
                List<Row> rows = tx.queryBlocking("SELECT count(*) AS n FROM " + prefix + "seen", List.of());
                assertEquals(new SqlValue.Int(1L), Relaybox.get(rows.get(0), "n"));
                tx.rollbackBlocking();
            }
            assertTrue(outbox.url().contains("127.0.0.1") || outbox.url().contains("localhost"));
        }
    }
}
