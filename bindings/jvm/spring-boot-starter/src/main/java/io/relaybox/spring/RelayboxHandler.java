package io.relaybox.spring;

import io.relaybox.Message;

/**
 * Handles the messages of a consumer configured under {@code relaybox.consumers}.
 * It runs inside a Spring-managed transaction that already holds the
 * message's inbox row: writes through {@code JdbcTemplate}, JPA repositories
 * or any {@code @Transactional} bean join it and commit with the row.
 * Throwing rolls all of it back; the message is retried with backoff and
 * dead-lettered after {@code max_retries} ({@code RelayboxException.Rejected}
 * dead-letters it at once).
 */
@FunctionalInterface
public interface RelayboxHandler {
    /**
     * Handles one message.
     *
     * @param message the message
     * @throws Exception to roll the transaction back and retry the message
     */
    void handle(Message message) throws Exception;
}
