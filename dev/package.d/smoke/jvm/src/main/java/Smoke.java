import io.relaybox.Consumer;
import io.relaybox.MessageHandler;
import io.relaybox.Outbox;
import io.relaybox.Relay;
import io.relaybox.Relaybox;
import io.relaybox.Row;
import io.relaybox.SqlValue;
import io.relaybox.Transports;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import java.util.concurrent.atomic.AtomicInteger;

/**
 * Enqueues one message on SQLite, relays it over the database transport and
 * consumes it once; then rewinds the consumer, so that the transport delivers
 * the message again, and checks that the inbox skips it. Prints
 * {@code smoke: delivered=1 handled=1 startup_ms=<n>}, where startup_ms is the
 * time from the first use of relaybox (loading the native library from the
 * jar) to the first enqueue returning.
 */
public final class Smoke {
    private Smoke() {}

    public static void main(String[] args) throws Exception {
        Path dir = Files.createTempDirectory("relaybox-smoke-");
        String url = "sqlite://" + dir.resolve("smoke.db") + "?mode=rwc";

        long started = System.nanoTime();
        try (Outbox outbox = Outbox.Companion.openBlocking(url, null, true)) {
            String id = Relaybox.transactionBlocking(outbox, tx ->
                    tx.enqueueBlocking(Relaybox.jsonMessage("smoke", "{\"n\": 1}", "k-1", "SmokeTested")));
            double startupMs = (System.nanoTime() - started) / 1e6;

            sql(outbox, "CREATE TABLE smoke_handled (id TEXT PRIMARY KEY)");
            AtomicInteger calls = new AtomicInteger();
            MessageHandler handler = Relaybox.messageHandler((message, tx) -> {
                calls.incrementAndGet();
                tx.executeBlocking("INSERT INTO smoke_handled (id) VALUES (?)",
                        List.of(new SqlValue.Text(message.getId())));
            });

            long delivered;
            try (Relay relay = Relay.Companion.start(outbox, Transports.database(), "{\"poll_interval\": 50}")) {
                try (Consumer consumer = Consumer.Companion.start(
                        outbox, Transports.database(), "smoke", "{\"group\": \"smoke\", \"poll_interval\": 50}",
                        handler)) {
                    waitFor("the message handled", () -> consumer.stats().getProcessed() == 1L);
                    waitFor("the relay's count", () -> relay.stats().getDelivered() > 0L);
                    waitFor("the consumer's position",
                            () -> !query(outbox, "SELECT 1 AS one FROM relaybox_positions").isEmpty());
                    consumer.stopBlocking();
                }
                delivered = relay.stats().getDelivered();

                // Delivered again from the start: the inbox skips the message.
                sql(outbox, "UPDATE relaybox_positions SET position = 0");
                try (Consumer again = Consumer.Companion.start(
                        outbox, Transports.database(), "smoke", "{\"group\": \"smoke\", \"poll_interval\": 50}",
                        handler)) {
                    waitFor("the duplicate skipped", () -> again.stats().getDuplicates() == 1L);
                    again.stopBlocking();
                }
                relay.stopBlocking();
            }

            List<Row> rows = query(outbox, "SELECT id FROM smoke_handled");
            long handled = rows.size();
            if (delivered != 1L || handled != 1L || calls.get() != 1
                    || !Relaybox.get(rows.get(0), "id").equals(new SqlValue.Text(id))) {
                throw new AssertionError("smoke: delivered=" + delivered + " handled=" + handled
                        + " handler calls=" + calls.get() + ", expected 1, 1 and 1");
            }
            System.out.printf("smoke: delivered=%d handled=%d startup_ms=%.1f%n", delivered, handled, startupMs);
        } finally {
            try (var files = Files.walk(dir)) {
                files.sorted(java.util.Comparator.reverseOrder()).forEach(p -> p.toFile().delete());
            }
        }
    }

    private static void sql(Outbox outbox, String statement) throws Exception {
        Relaybox.transactionBlocking(outbox, tx -> tx.executeBlocking(statement, List.of()));
    }

    private static List<Row> query(Outbox outbox, String statement) throws Exception {
        return Relaybox.transactionBlocking(outbox, tx -> tx.queryBlocking(statement, List.of()));
    }

    /** A condition to wait for; may throw (a relaybox call). */
    private interface Check {
        boolean holds() throws Exception;
    }

    private static void waitFor(String what, Check check) throws Exception {
        long deadline = System.nanoTime() + 30_000_000_000L;
        while (!check.holds()) {
            if (System.nanoTime() > deadline) {
                throw new AssertionError("smoke: timed out waiting for " + what);
            }
            Thread.sleep(20);
        }
    }
}
