package io.relaybox.spring;

import io.relaybox.Outbox;
import io.relaybox.RelayboxException;
import io.relaybox.Slf4jLogging;
import javax.sql.DataSource;
import org.springframework.beans.factory.BeanFactory;
import org.springframework.boot.autoconfigure.AutoConfiguration;
import org.springframework.boot.autoconfigure.condition.ConditionalOnMissingBean;
import org.springframework.boot.autoconfigure.condition.ConditionalOnProperty;
import org.springframework.boot.autoconfigure.jdbc.DataSourceAutoConfiguration;
import org.springframework.boot.autoconfigure.jdbc.DataSourceTransactionManagerAutoConfiguration;
import org.springframework.boot.autoconfigure.orm.jpa.HibernateJpaAutoConfiguration;
import org.springframework.boot.context.properties.EnableConfigurationProperties;
import org.springframework.context.annotation.Bean;
import org.springframework.transaction.PlatformTransactionManager;

/**
 * relaybox for a Spring Boot application, active when {@code relaybox.url}
 * is set: the {@link Outbox} (migrated at start when
 * {@code relaybox.migrate=true}), the {@link RelayboxOutbox} whose enqueue
 * joins the current Spring-managed transaction, and the
 * {@link RelayboxLifecycle} running the relay and consumers of
 * {@link RelayboxProperties}.
 */
@AutoConfiguration(
        after = {
            DataSourceAutoConfiguration.class,
            DataSourceTransactionManagerAutoConfiguration.class,
            HibernateJpaAutoConfiguration.class
        })
@ConditionalOnProperty(prefix = "relaybox", name = "url")
@EnableConfigurationProperties(RelayboxProperties.class)
public class RelayboxAutoConfiguration {
    /** Creates the auto-configuration. */
    public RelayboxAutoConfiguration() {}

    /**
     * The relaybox outbox: a connection pool of its own to {@code relaybox.url}
     * (for the relay, the consumers and status queries), closed with the context.
     * The core's log records go to SLF4J from here on ({@link Slf4jLogging},
     * at the level of the {@code relaybox} logger).
     *
     * @param properties the settings
     * @return the outbox
     */
    @Bean(destroyMethod = "shutdownBlocking")
    @ConditionalOnMissingBean
    public Outbox relayboxNativeOutbox(RelayboxProperties properties) {
        try {
            Slf4jLogging.install();
            return Outbox.Companion.openBlocking(properties.getUrl(), storeOptions(properties), properties.isMigrate());
        } catch (RelayboxException e) {
            throw new RelayboxSpringException(e);
        }
    }

    /**
     * The outbox of the application's transactions.
     *
     * @param outbox the relaybox outbox
     * @param dataSource the application's DataSource
     * @return the Spring outbox
     */
    @Bean
    @ConditionalOnMissingBean
    public RelayboxOutbox relayboxOutbox(Outbox outbox, DataSource dataSource) {
        return new RelayboxOutbox(outbox, dataSource);
    }

    /**
     * The relay and the consumers, started and stopped with the context.
     *
     * @param outbox the relaybox outbox
     * @param dataSource the DataSource of the consumers' transactions
     * @param transactionManager the transaction manager of the consumers' transactions
     * @param properties the settings
     * @param beans where handler beans are looked up
     * @return the lifecycle bean
     */
    @Bean
    @ConditionalOnMissingBean
    public RelayboxLifecycle relayboxLifecycle(
            Outbox outbox,
            DataSource dataSource,
            PlatformTransactionManager transactionManager,
            RelayboxProperties properties,
            BeanFactory beans) {
        return new RelayboxLifecycle(outbox, dataSource, transactionManager, properties, beans);
    }

    /** The store options JSON: {@code relaybox.options} with {@code table_prefix} set from {@code relaybox.table-prefix}. */
    static String storeOptions(RelayboxProperties properties) {
        String options = properties.getOptions() == null ? "" : properties.getOptions().trim();
        String prefix = properties.getTablePrefix();
        if (prefix == null || prefix.isEmpty()) {
            return options.isEmpty() ? null : options;
        }
        String entry = "\"table_prefix\": " + RelayboxLifecycle.quote(prefix);
        if (options.isEmpty() || options.equals("{}")) {
            return "{" + entry + "}";
        }
        return "{" + entry + ", " + options.substring(1);
    }
}
