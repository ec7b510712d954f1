package io.relaybox.spring;

import io.relaybox.Consumer;
import io.relaybox.HostResult;
import io.relaybox.HostStatement;
import io.relaybox.Jdbc;
import io.relaybox.Outbox;
import io.relaybox.Relay;
import io.relaybox.Relaybox;
import io.relaybox.RelayboxException;
import java.sql.Connection;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import javax.sql.DataSource;
import org.springframework.beans.factory.BeanFactory;
import org.springframework.context.SmartLifecycle;
import org.springframework.jdbc.datasource.DataSourceUtils;
import org.springframework.transaction.PlatformTransactionManager;
import org.springframework.transaction.support.TransactionTemplate;

/**
 * Starts the relay and the consumers of {@code relaybox.*} when the
 * application context starts, and stops them (finishing the messages in
 * flight) when it stops, before the DataSource and the outbox close.
 */
public class RelayboxLifecycle implements SmartLifecycle {
    private final Outbox outbox;
    private final DataSource dataSource;
    private final PlatformTransactionManager transactionManager;
    private final RelayboxProperties properties;
    private final BeanFactory beans;
    private final List<AutoCloseable> running = new ArrayList<>();
    private boolean started;
    private Relay relay;
    private final Map<String, Consumer> consumers = new java.util.LinkedHashMap<>();

    /**
     * The lifecycle of the relay and consumers configured in {@code properties}.
     *
     * @param outbox the outbox
     * @param dataSource the DataSource of the consumers' transactions
     * @param transactionManager the transaction manager of the consumers' transactions
     * @param properties the settings
     * @param beans where the handler beans are looked up by name
     */
    public RelayboxLifecycle(
            Outbox outbox,
            DataSource dataSource,
            PlatformTransactionManager transactionManager,
            RelayboxProperties properties,
            BeanFactory beans) {
        this.outbox = outbox;
        this.dataSource = dataSource;
        this.transactionManager = transactionManager;
        this.properties = properties;
        this.beans = beans;
    }

    @Override
    public synchronized void start() {
        if (started) {
            return;
        }
        started = true;
        try {
            if (properties.getRelay().isEnabled()) {
                relay = Relay.Companion.start(
                        outbox, properties.getRelay().getTransport(), properties.getRelay().getConfig());
                running.add(relay);
            }
            for (RelayboxProperties.ConsumerProperties c : properties.getConsumers()) {
                if (c.isEnabled()) {
                    Consumer consumer = startConsumer(c);
                    consumers.put(c.getGroup() + "/" + c.getTopic(), consumer);
                    running.add(consumer);
                }
            }
        } catch (RelayboxException e) {
            stop();
            throw new RelayboxSpringException(e);
        } catch (RuntimeException e) {
            stop();
            throw e;
        }
    }

    private Consumer startConsumer(RelayboxProperties.ConsumerProperties c) throws RelayboxException {
        if (c.getTopic() == null || c.getGroup() == null || c.getHandler() == null) {
            throw new RelayboxException.InvalidConfig(
                    "every relaybox.consumers entry needs topic, group and handler (a RelayboxHandler bean name)",
                    false,
                    null);
        }
        RelayboxHandler handler = beans.getBean(c.getHandler(), RelayboxHandler.class);
        String config = withGroup(c.getConfig(), c.getGroup());
        TransactionTemplate transactions = new TransactionTemplate(transactionManager);
        return Consumer.Companion.startHost(
                outbox, c.getTransport(), c.getTopic(), config, "question", Relaybox.hostHandler((message, inbox) -> {
                    try {
                        return transactions.execute(status -> {
                            try {
                                if (!insertInbox(inbox)) {
                                    status.setRollbackOnly();
                                    return HostResult.Duplicate.INSTANCE;
                                }
                                handler.handle(message);
                            } catch (RuntimeException e) {
                                throw e;
                            } catch (Exception e) {
                                throw new HandlerFailure(e);
                            }
                            return HostResult.Processed.INSTANCE;
                        });
                    } catch (HandlerFailure failure) {
                        throw (Exception) failure.getCause();
                    }
                }));
    }

    /** Runs the inbox statement with the current transaction's connection; true when the message is new. */
    private boolean insertInbox(HostStatement inbox) throws RelayboxException {
        Connection connection = DataSourceUtils.getConnection(dataSource);
        try {
            return Jdbc.insertInbox(outbox, connection, inbox);
        } finally {
            DataSourceUtils.releaseConnection(connection, dataSource);
        }
    }

    /** The consumer settings JSON with {@code "group"} set. */
    static String withGroup(String config, String group) throws RelayboxException {
        String body = config == null ? "" : config.trim();
        if (body.isEmpty() || body.equals("{}")) {
            return "{\"group\": " + quote(group) + "}";
        }
        if (!body.startsWith("{")) {
            throw new RelayboxException.InvalidConfig(
                    "relaybox.consumers[].config must be a JSON object", false, null);
        }
        return "{\"group\": " + quote(group) + ", " + body.substring(1);
    }

    static String quote(String s) {
        StringBuilder b = new StringBuilder("\"");
        for (char ch : s.toCharArray()) {
            if (ch == '"' || ch == '\\') {
                b.append('\\').append(ch);
            } else if (ch < ' ') {
                b.append(String.format("\\u%04x", (int) ch));
            } else {
                b.append(ch);
            }
        }
        return b.append('"').toString();
    }

    @Override
    public synchronized void stop() {
        RuntimeException failure = null;
        for (int i = running.size() - 1; i >= 0; i--) {
            AutoCloseable item = running.get(i);
            try {
                if (item instanceof Consumer consumer) {
                    consumer.stopBlocking();
                } else if (item instanceof Relay r) {
                    r.stopBlocking();
                }
                item.close();
            } catch (Exception e) {
                if (failure == null) {
                    failure = new IllegalStateException("stopping relaybox failed: " + e.getMessage(), e);
                }
            }
        }
        running.clear();
        consumers.clear();
        relay = null;
        started = false;
        if (failure != null) {
            throw failure;
        }
    }

    @Override
    public synchronized boolean isRunning() {
        return started;
    }

    /**
     * The running relay.
     *
     * @return the relay, or null when none runs
     */
    public synchronized Relay getRelay() {
        return relay;
    }

    /**
     * A running consumer.
     *
     * @param group its group
     * @param topic its topic
     * @return the consumer, or null when none runs for them
     */
    public synchronized Consumer getConsumer(String group, String topic) {
        return consumers.get(group + "/" + topic);
    }

    /** A checked exception of a handler, carried through the transaction template. */
    static final class HandlerFailure extends RuntimeException {
        private static final long serialVersionUID = 1L;

        HandlerFailure(Exception cause) {
            super(cause);
        }
    }
}
