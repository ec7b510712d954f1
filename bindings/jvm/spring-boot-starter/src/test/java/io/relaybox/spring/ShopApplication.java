package io.relaybox.spring;

import io.relaybox.Relaybox;
import java.util.concurrent.atomic.AtomicBoolean;
import java.util.concurrent.atomic.AtomicInteger;
import org.springframework.boot.autoconfigure.SpringBootApplication;
import org.springframework.context.annotation.Bean;
import org.springframework.jdbc.core.JdbcTemplate;
import org.springframework.stereotype.Service;
import org.springframework.transaction.annotation.Transactional;

/** A small shop: orders written with JdbcTemplate or JPA, each with its event; an audit consumer. */
@SpringBootApplication
public class ShopApplication {
    /** The topic of the shop's events. */
    static final String TOPIC = "relaybox-spring-orders";

    /** Attempts of the audit handler. */
    static final AtomicInteger HANDLER_CALLS = new AtomicInteger();

    /** Whether the audit handler has failed its first attempt yet. */
    static final AtomicBoolean FAILED_ONCE = new AtomicBoolean();

    /**
     * The audit handler: writes an entry through JPA and a line through
     * JdbcTemplate in the consumer's transaction; its first attempt fails
     * after both writes.
     *
     * @param audit the repository
     * @param jdbc the JdbcTemplate
     * @return the handler
     */
    @Bean
    RelayboxHandler auditHandler(AuditEntries audit, JdbcTemplate jdbc) {
        return message -> {
            HANDLER_CALLS.incrementAndGet();
            audit.saveAndFlush(new AuditEntry(message.getId(), message.getEventType()));
            jdbc.update("INSERT INTO relaybox_spring_audit_log (message_id) VALUES (?)", message.getId());
            if (FAILED_ONCE.compareAndSet(false, true)) {
                throw new java.io.IOException("audit store busy");
            }
        };
    }

    /** Places orders: the business row and its event in one transaction. */
    @Service
    public static class OrderService {
        private final JdbcTemplate jdbc;
        private final ShopOrders orders;
        private final RelayboxOutbox outbox;

        OrderService(JdbcTemplate jdbc, ShopOrders orders, RelayboxOutbox outbox) {
            this.jdbc = jdbc;
            this.orders = orders;
            this.outbox = outbox;
        }

        /**
         * Places an order with JdbcTemplate; {@code fail} throws after the writes.
         *
         * @param id the order id
         * @param fail whether to fail after writing
         * @return the event id
         */
        @Transactional
        public String placeWithJdbc(int id, boolean fail) {
            jdbc.update("INSERT INTO relaybox_spring_orders (id, item) VALUES (?, ?)", id, "jdbc");
            String eventId = outbox.enqueue(Relaybox.jsonMessage(TOPIC, "{\"order\": " + id + "}", "o" + id, "PlacedWithJdbc"));
            if (fail) {
                throw new IllegalStateException("payment declined");
            }
            return eventId;
        }

        /**
         * Places an order with JPA; {@code fail} throws after the writes.
         *
         * @param id the order id
         * @param fail whether to fail after writing
         * @return the event id
         */
        @Transactional
        public String placeWithJpa(int id, boolean fail) {
            orders.saveAndFlush(new ShopOrder(id, "jpa"));
            String eventId = outbox.enqueue(Relaybox.jsonMessage(TOPIC, "{\"order\": " + id + "}", "o" + id, "PlacedWithJpa"));
            if (fail) {
                throw new IllegalStateException("payment declined");
            }
            return eventId;
        }

        /**
         * Writes an order and an event whose topic is invalid.
         *
         * @param id the order id
         */
        @Transactional
        public void placeWithBadTopic(int id) {
            jdbc.update("INSERT INTO relaybox_spring_orders (id, item) VALUES (?, ?)", id, "bad");
            outbox.enqueue(Relaybox.textMessage("no spaces allowed", "x"));
        }
    }
}
