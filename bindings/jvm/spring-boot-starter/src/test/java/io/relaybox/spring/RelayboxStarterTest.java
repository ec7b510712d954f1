package io.relaybox.spring;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assertions.fail;

import io.relaybox.Consumer;
import io.relaybox.ConsumerStats;
import io.relaybox.Relaybox;
import io.relaybox.RelayboxException;
import java.net.URI;
import java.sql.Connection;
import java.sql.DriverManager;
import java.sql.Statement;
import java.util.List;
import java.util.Map;
import java.util.Properties;
import java.util.UUID;
import java.util.function.BooleanSupplier;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;
import org.springframework.beans.factory.annotation.Autowired;
import org.springframework.boot.test.context.SpringBootTest;
import org.springframework.jdbc.core.JdbcTemplate;
import org.springframework.test.context.DynamicPropertyRegistry;
import org.springframework.test.context.DynamicPropertySource;

/**
 * The starter in a real Spring Boot application on the real PostgreSQL:
 * {@code @Transactional} service methods writing with JdbcTemplate and JPA,
 * the relay to the database transport, and a consumer whose handler writes
 * through JPA in the Spring-managed transaction holding the inbox row.
 */
@SpringBootTest(classes = ShopApplication.class)
class RelayboxStarterTest {
    private static final String PREFIX = "spring_" + UUID.randomUUID().toString().replace("-", "").substring(0, 10) + "_";
    private static final String GROUP = PREFIX + "audit";

    @Autowired
    private ShopApplication.OrderService orders;

    @Autowired
    private RelayboxOutbox outbox;

    @Autowired
    private RelayboxLifecycle lifecycle;

    @Autowired
    private JdbcTemplate jdbc;

    @Autowired
    private AuditEntries audit;

    private static String databaseUrl() {
        String url = System.getenv("RELAYBOX_TEST_DATABASE_URL");
        if (url == null || url.isBlank()) {
            fail("RELAYBOX_TEST_DATABASE_URL is not set: start the services with "
                    + "`dev/services start && eval \"$(dev/services env)\"`");
        }
        return url.trim();
    }

    /** The JDBC URL, user and password of a {@code postgres://} URL. */
    private static String[] jdbcParts(String url) {
        URI uri = URI.create(url);
        String userInfo = uri.getUserInfo() == null ? "" : uri.getUserInfo();
        String user = userInfo.contains(":") ? userInfo.substring(0, userInfo.indexOf(':')) : userInfo;
        String password = userInfo.contains(":") ? userInfo.substring(userInfo.indexOf(':') + 1) : "";
        int port = uri.getPort() > 0 ? uri.getPort() : 5432;
        return new String[] {"jdbc:postgresql://" + uri.getHost() + ":" + port + uri.getPath(), user, password};
    }

    private static void sql(String... statements) throws Exception {
        String[] parts = jdbcParts(databaseUrl());
        Properties props = new Properties();
        props.setProperty("user", parts[1]);
        if (!parts[2].isEmpty()) {
            props.setProperty("password", parts[2]);
        }
        try (Connection c = DriverManager.getConnection(parts[0], props); Statement st = c.createStatement()) {
            for (String s : statements) {
                st.execute(s);
            }
        }
    }

    @DynamicPropertySource
    static void properties(DynamicPropertyRegistry registry) {
        String[] parts = jdbcParts(databaseUrl());
        registry.add("spring.datasource.url", () -> parts[0]);
        registry.add("spring.datasource.username", () -> parts[1]);
        registry.add("spring.datasource.password", () -> parts[2]);
        registry.add("spring.jpa.hibernate.ddl-auto", () -> "none");
        registry.add("spring.jpa.open-in-view", () -> "false");
        registry.add("relaybox.url", RelayboxStarterTest::databaseUrl);
        registry.add("relaybox.table-prefix", () -> PREFIX);
        registry.add("relaybox.migrate", () -> "true");
        registry.add("relaybox.relay.enabled", () -> "true");
        registry.add("relaybox.relay.config", () -> "{\"poll_interval\": \"100ms\"}");
        registry.add("relaybox.consumers[0].topic", () -> ShopApplication.TOPIC);
        registry.add("relaybox.consumers[0].group", () -> GROUP);
        registry.add("relaybox.consumers[0].handler", () -> "auditHandler");
        registry.add("relaybox.consumers[0].config", () -> "{\"retry_delay\": \"10ms\", \"poll_interval\": \"100ms\"}");
    }

    @BeforeAll
    static void createTables() throws Exception {
        sql("DROP TABLE IF EXISTS relaybox_spring_orders, relaybox_spring_audit, relaybox_spring_audit_log",
                "CREATE TABLE relaybox_spring_orders (id int PRIMARY KEY, item text NOT NULL)",
                "CREATE TABLE relaybox_spring_audit_log (message_id text NOT NULL)",
                "CREATE TABLE relaybox_spring_audit (message_id text PRIMARY KEY, event_type text NOT NULL)");
    }

    @AfterAll
    static void dropTables() throws Exception {
        sql("DROP TABLE IF EXISTS relaybox_spring_orders, relaybox_spring_audit, relaybox_spring_audit_log",
                "DO $$ DECLARE t text; BEGIN FOR t IN SELECT tablename FROM pg_tables WHERE schemaname = current_schema() "
                        + "AND tablename LIKE '" + PREFIX + "%' LOOP EXECUTE format('DROP TABLE %I CASCADE', t); END LOOP; END $$");
    }

    /** Events of the order keys in the outbox or the log: written at all, delivered or not. */
    private long events(String... keys) {
        String in = "'" + String.join("','", keys) + "'";
        Long outboxRows = jdbc.queryForObject("SELECT count(*) FROM " + PREFIX + "outbox WHERE key IN (" + in + ")", Long.class);
        Long logRows = jdbc.queryForObject("SELECT count(*) FROM " + PREFIX + "log WHERE key IN (" + in + ")", Long.class);
        return outboxRows + logRows;
    }

    private long ordersWithIds(int... ids) {
        long n = 0;
        for (int id : ids) {
            n += jdbc.queryForObject("SELECT count(*) FROM relaybox_spring_orders WHERE id = ?", Long.class, id);
        }
        return n;
    }

    private static void waitFor(String what, BooleanSupplier probe) throws InterruptedException {
        long deadline = System.nanoTime() + 30_000_000_000L;
        while (System.nanoTime() < deadline) {
            if (probe.getAsBoolean()) {
                return;
            }
            Thread.sleep(20);
        }
        fail("timed out after 30 s waiting for " + what);
    }

    @Test
    void aTransactionalMethodThatThrowsWritesNeitherTheRowNorTheEvent() {
        assertThrows(IllegalStateException.class, () -> orders.placeWithJdbc(1, true));
        assertThrows(IllegalStateException.class, () -> orders.placeWithJpa(2, true));
        assertEquals(0L, ordersWithIds(1, 2));
        assertEquals(0L, events("o1", "o2"));
    }

    @Test
    void committedEventsAreDeliveredOnceToAHandlerWhoseJpaWritesShareTheInboxTransaction() throws Exception {
        String jdbcEvent = orders.placeWithJdbc(10, false);
        String jpaEvent = orders.placeWithJpa(11, false);
        assertEquals(2L, ordersWithIds(10, 11));

        Consumer consumer = lifecycle.getConsumer(GROUP, ShopApplication.TOPIC);
        waitFor("both events handled", () -> consumer.stats().getProcessed() == 2L);
        ConsumerStats stats = consumer.stats();
        // The handler's first attempt wrote through JPA and JdbcTemplate, then
        // threw: its writes rolled back with the inbox row, the retry wrote them once.
        assertEquals(1L, stats.getRetried());
        assertEquals(0L, stats.getDeadLettered());
        assertEquals(3, ShopApplication.HANDLER_CALLS.get());
        Map<String, String> written = new java.util.TreeMap<>();
        audit.findAll().forEach(e -> written.put(e.getMessageId(), e.getEventType()));
        assertEquals(new java.util.TreeMap<>(Map.of(jdbcEvent, "PlacedWithJdbc", jpaEvent, "PlacedWithJpa")), written);
        List<String> logged = jdbc.queryForList(
                "SELECT message_id FROM relaybox_spring_audit_log ORDER BY message_id", String.class);
        assertEquals(new java.util.ArrayList<>(written.keySet()), logged);
        Long inboxRows = jdbc.queryForObject(
                "SELECT count(*) FROM " + PREFIX + "inbox WHERE consumer_group = ?", Long.class, GROUP);
        assertEquals(2L, inboxRows);
    }

    @Test
    void badInputIsATypedErrorAndWritesNothing() {
        RelayboxSpringException outside = assertThrows(RelayboxSpringException.class,
                () -> outbox.enqueue(Relaybox.jsonMessage(ShopApplication.TOPIC, "{}", "o30", null)));
        assertEquals("invalid_config", outside.getCode());
        assertTrue(outside.getMessage().contains("@Transactional"), outside.getMessage());

        RelayboxSpringException badTopic = assertThrows(RelayboxSpringException.class, () -> orders.placeWithBadTopic(20));
        assertEquals("invalid_topic", badTopic.getCode());
        // Unchecked, so the service method's transaction rolled back its row.
        assertEquals(0L, ordersWithIds(20));
        assertEquals(0L, events("o30"));
        assertTrue(badTopic.getRelayboxException() instanceof RelayboxException.InvalidTopic);
    }
}
