package io.relaybox.spring;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertNotNull;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assertions.fail;

import io.relaybox.Outbox;
import java.net.URI;
import java.util.UUID;
import org.junit.jupiter.api.Test;
import org.springframework.boot.autoconfigure.AutoConfigurations;
import org.springframework.boot.autoconfigure.jdbc.DataSourceAutoConfiguration;
import org.springframework.boot.autoconfigure.jdbc.DataSourceTransactionManagerAutoConfiguration;
import org.springframework.boot.test.context.runner.ApplicationContextRunner;
import org.springframework.jdbc.core.JdbcTemplate;

/**
 * The auto-configuration in small contexts on plain JDBC: which beans it
 * makes, the lifecycle of the relay, and a bad consumer entry.
 */
class RelayboxAutoConfigurationTest {
    private final String prefix = "springac_" + UUID.randomUUID().toString().replace("-", "").substring(0, 10) + "_";

    private static String databaseUrl() {
        String url = System.getenv("RELAYBOX_TEST_DATABASE_URL");
        if (url == null || url.isBlank()) {
            fail("RELAYBOX_TEST_DATABASE_URL is not set: start the services with "
                    + "`dev/services start && eval \"$(dev/services env)\"`");
        }
        return url.trim();
    }

    private ApplicationContextRunner runner() {
        URI uri = URI.create(databaseUrl());
        String userInfo = uri.getUserInfo() == null ? "" : uri.getUserInfo();
        String user = userInfo.contains(":") ? userInfo.substring(0, userInfo.indexOf(':')) : userInfo;
        String password = userInfo.contains(":") ? userInfo.substring(userInfo.indexOf(':') + 1) : "";
        int port = uri.getPort() > 0 ? uri.getPort() : 5432;
        return new ApplicationContextRunner()
                .withConfiguration(AutoConfigurations.of(
                        DataSourceAutoConfiguration.class,
                        DataSourceTransactionManagerAutoConfiguration.class,
                        RelayboxAutoConfiguration.class))
                .withPropertyValues(
                        "spring.datasource.url=jdbc:postgresql://" + uri.getHost() + ":" + port + uri.getPath(),
                        "spring.datasource.username=" + user,
                        "spring.datasource.password=" + password);
    }

    private void dropTables() {
        runner().run(context -> {
            JdbcTemplate jdbc = new JdbcTemplate(context.getBean(javax.sql.DataSource.class));
            for (String table : jdbc.queryForList(
                    "SELECT tablename FROM pg_tables WHERE schemaname = current_schema() AND tablename LIKE ?",
                    String.class, prefix + "%")) {
                jdbc.execute("DROP TABLE IF EXISTS \"" + table + "\" CASCADE");
            }
        });
    }

    @Test
    void withoutRelayboxUrlNothingIsConfigured() {
        runner().run(context -> {
            assertFalse(context.containsBean("relayboxOutbox"));
            assertTrue(context.getBeansOfType(RelayboxLifecycle.class).isEmpty());
        });
    }

    @Test
    void theRelayRunsWithTheContextAndStopsWithIt() {
        RelayboxLifecycle[] seen = new RelayboxLifecycle[1];
        try {
            runner().withPropertyValues(
                            "relaybox.url=" + databaseUrl(),
                            "relaybox.table-prefix=" + prefix,
                            "relaybox.migrate=true",
                            "relaybox.relay.enabled=true")
                    .run(context -> {
                        assertNull(context.getStartupFailure());
                        RelayboxLifecycle lifecycle = context.getBean(RelayboxLifecycle.class);
                        seen[0] = lifecycle;
                        assertTrue(lifecycle.isRunning());
                        assertNotNull(lifecycle.getRelay());
                        assertTrue(lifecycle.getRelay().isRunning());
                        Outbox outbox = context.getBean(RelayboxOutbox.class).getOutbox();
                        assertEquals(prefix, outbox.tablePrefix());
                        assertEquals(0L, outbox.pendingCountBlocking());
                    });
            // Closing the context stopped the relay.
            assertFalse(seen[0].isRunning());
            assertNull(seen[0].getRelay());
        } finally {
            dropTables();
        }
    }

    @Test
    void aConsumerWithoutHandlerFailsTheStartWithATypedError() {
        try {
            runner().withPropertyValues(
                            "relaybox.url=" + databaseUrl(),
                            "relaybox.table-prefix=" + prefix,
                            "relaybox.migrate=true",
                            "relaybox.consumers[0].topic=orders",
                            "relaybox.consumers[0].group=billing")
                    .run(context -> {
                        Throwable failure = context.getStartupFailure();
                        assertNotNull(failure);
                        while (failure != null && !(failure instanceof RelayboxSpringException)) {
                            failure = failure.getCause();
                        }
                        assertNotNull(failure, () -> "no RelayboxSpringException in " + context.getStartupFailure());
                        RelayboxSpringException error = (RelayboxSpringException) failure;
                        assertEquals("invalid_config", error.getCode());
                        assertTrue(error.getMessage().contains("handler"), error.getMessage());
                    });
        } finally {
            dropTables();
        }
    }
}
