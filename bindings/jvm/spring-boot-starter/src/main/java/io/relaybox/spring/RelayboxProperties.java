package io.relaybox.spring;

import java.util.ArrayList;
import java.util.List;
import org.springframework.boot.context.properties.ConfigurationProperties;

/**
 * The {@code relaybox.*} settings of a Spring Boot application.
 *
 * <pre>
 * relaybox.url=postgres://app:secret@db:5432/shop
 * relaybox.table-prefix=relaybox_
 * relaybox.migrate=true
 * relaybox.relay.enabled=true
 * relaybox.relay.transport=database
 * relaybox.consumers[0].topic=orders
 * relaybox.consumers[0].group=billing
 * relaybox.consumers[0].handler=orderHandler
 * </pre>
 */
@ConfigurationProperties(prefix = "relaybox")
public class RelayboxProperties {
    /** The outbox database ({@code postgres://user:password@host:port/db}); the same database as the DataSource. */
    private String url;

    /** Prefix of relaybox's tables; the store's default when empty. */
    private String tablePrefix;

    /** Store options as a JSON object (e.g. {@code {"partitions": 16}}), merged under {@code table-prefix}. */
    private String options;

    /** Apply relaybox's migrations when the application starts. */
    private boolean migrate = false;

    /** The relay of this application. */
    private final Relay relay = new Relay();

    /** Consumers whose handlers run in a Spring-managed transaction holding the inbox row. */
    private List<ConsumerProperties> consumers = new ArrayList<>();

    /** @return the outbox database URL */
    public String getUrl() {
        return url;
    }

    /** @param url the outbox database URL */
    public void setUrl(String url) {
        this.url = url;
    }

    /** @return the table prefix, or null for the default */
    public String getTablePrefix() {
        return tablePrefix;
    }

    /** @param tablePrefix the table prefix */
    public void setTablePrefix(String tablePrefix) {
        this.tablePrefix = tablePrefix;
    }

    /** @return the store options as JSON, or null */
    public String getOptions() {
        return options;
    }

    /** @param options the store options as JSON */
    public void setOptions(String options) {
        this.options = options;
    }

    /** @return whether migrations run at start */
    public boolean isMigrate() {
        return migrate;
    }

    /** @param migrate whether migrations run at start */
    public void setMigrate(boolean migrate) {
        this.migrate = migrate;
    }

    /** @return the relay settings */
    public Relay getRelay() {
        return relay;
    }

    /** @return the consumers */
    public List<ConsumerProperties> getConsumers() {
        return consumers;
    }

    /** @param consumers the consumers */
    public void setConsumers(List<ConsumerProperties> consumers) {
        this.consumers = consumers;
    }

    /** The {@code relaybox.relay.*} settings. */
    public static class Relay {
        /** Run a relay in this application (started and stopped with the context). */
        private boolean enabled = false;

        /** Where the relay delivers: {@code database}, or a transport as JSON ({@code {"kafka": {...}}}). */
        private String transport = "database";

        /** Relay settings as a JSON object (e.g. {@code {"batch_size": 100}}). */
        private String config = "{}";

        /** @return whether the relay runs */
        public boolean isEnabled() {
            return enabled;
        }

        /** @param enabled whether the relay runs */
        public void setEnabled(boolean enabled) {
            this.enabled = enabled;
        }

        /** @return the transport */
        public String getTransport() {
            return transport;
        }

        /** @param transport the transport */
        public void setTransport(String transport) {
            this.transport = transport;
        }

        /** @return the relay settings as JSON */
        public String getConfig() {
            return config;
        }

        /** @param config the relay settings as JSON */
        public void setConfig(String config) {
            this.config = config;
        }
    }

    /** One {@code relaybox.consumers[n]} entry. */
    public static class ConsumerProperties {
        /** The topic consumed. */
        private String topic;

        /** The consumer group: its inbox keeps each message processed once for the group. */
        private String group;

        /** The name of the {@link RelayboxHandler} bean that handles the messages. */
        private String handler;

        /** Where the consumer reads: {@code database}, or a transport as JSON. */
        private String transport = "database";

        /** Further consumer settings as a JSON object (e.g. {@code {"max_retries": 5}}). */
        private String config = "{}";

        /** Start this consumer with the context. */
        private boolean enabled = true;

        /** @return the topic */
        public String getTopic() {
            return topic;
        }

        /** @param topic the topic */
        public void setTopic(String topic) {
            this.topic = topic;
        }

        /** @return the group */
        public String getGroup() {
            return group;
        }

        /** @param group the group */
        public void setGroup(String group) {
            this.group = group;
        }

        /** @return the handler bean name */
        public String getHandler() {
            return handler;
        }

        /** @param handler the handler bean name */
        public void setHandler(String handler) {
            this.handler = handler;
        }

        /** @return the transport */
        public String getTransport() {
            return transport;
        }

        /** @param transport the transport */
        public void setTransport(String transport) {
            this.transport = transport;
        }

        /** @return the consumer settings as JSON */
        public String getConfig() {
            return config;
        }

        /** @param config the consumer settings as JSON */
        public void setConfig(String config) {
            this.config = config;
        }

        /** @return whether it starts with the context */
        public boolean isEnabled() {
            return enabled;
        }

        /** @param enabled whether it starts with the context */
        public void setEnabled(boolean enabled) {
            this.enabled = enabled;
        }
    }
}
