package io.relaybox;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.util.List;
import java.util.concurrent.CopyOnWriteArrayList;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.Test;

/** Typed payloads, status and dead letters from plain Java, through the blocking variants. */
class TypedJavaTest {
    /** A Java record sent as a typed payload. */
    record Refund(String orderId, long cents) {}

    private final String prefix = TestSupport.INSTANCE.newPrefix();

    @AfterEach
    void dropTables() {
        TestSupport.INSTANCE.dropTables(prefix);
    }

    @Test
    void aRecordRoundTripsAndTheOutboxReportsFromJava() throws Exception {
        String topic = (prefix + "refunds").replace('_', '-');
        JsonCodec codec = new JsonCodec();
        try (Outbox outbox = Outbox.Companion.openBlocking(
                TestSupport.INSTANCE.getDatabaseUrl(), TestSupport.INSTANCE.options(prefix), true)) {
            Refund refund = new Refund("42", 1990);
            String id = Relaybox.transactionBlocking(outbox, tx ->
                    tx.enqueueBlocking(codec.message(topic, refund, "42", "RefundIssued")));

            OutboxStatus status = outbox.statusBlocking();
            assertEquals(1, status.getTopics().size());
            assertEquals(topic, status.getTopics().get(0).getTopic());
            assertEquals(1L, status.getTopics().get(0).getPending());
            assertEquals(0L, status.getDeadLetters());

            RelayboxException.InvalidMessage unwritable = assertThrows(RelayboxException.InvalidMessage.class,
                    () -> codec.message(topic, new Object()));
            assertEquals("invalid_message", Relaybox.getCode(unwritable));
            assertThrows(RelayboxException.InvalidValue.class,
                    () -> outbox.retryDeadLettersBlocking(List.of("not-an-id")));
            assertEquals(1L, outbox.pendingCountBlocking());

            List<Refund> received = new CopyOnWriteArrayList<>();
            MessageHandler handler = codec.handler(Refund.class, (value, message, tx) -> received.add(value));
            try (Relay relay = Relay.Companion.start(outbox, Transports.database(), "{\"poll_interval\": \"100ms\"}");
                 Consumer consumer = Consumer.Companion.start(outbox, Transports.database(), topic,
                         "{\"group\": \"java\", \"poll_interval\": \"100ms\"}", handler)) {
                TestSupport.INSTANCE.waitFor("consumed", 30_000, () -> consumer.stats().getProcessed() == 1L);
                consumer.stopBlocking();
                relay.stopBlocking();
            }
            assertEquals(List.of(refund), received);
            assertTrue(outbox.statusBlocking().getTopics().isEmpty());
            assertEquals(List.of(), outbox.deadLettersBlocking(100));
            assertEquals(0L, outbox.retryDeadLettersBlocking(null));
            assertEquals(0L, outbox.purgeDeadLettersBlocking(List.of(id)));
        }
    }
}
