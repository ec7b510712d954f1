package io.relaybox.spring;

import io.relaybox.Jdbc;
import io.relaybox.MessageSpec;
import io.relaybox.Outbox;
import io.relaybox.RelayboxException;
import java.sql.Connection;
import java.util.List;
import javax.sql.DataSource;
import org.springframework.jdbc.datasource.DataSourceUtils;
import org.springframework.transaction.support.TransactionSynchronizationManager;

/**
 * The outbox of a Spring application: {@link #enqueue} writes the event
 * with the connection of the current Spring-managed transaction
 * ({@code @Transactional}, {@code TransactionTemplate}; JDBC or JPA), so the
 * event commits or rolls back with the business writes of that transaction.
 */
public class RelayboxOutbox {
    private final Outbox outbox;
    private final DataSource dataSource;

    /**
     * An outbox writing through {@code dataSource}'s transactions.
     *
     * @param outbox the relaybox outbox (its database is {@code dataSource}'s)
     * @param dataSource the application's DataSource
     */
    public RelayboxOutbox(Outbox outbox, DataSource dataSource) {
        this.outbox = outbox;
        this.dataSource = dataSource;
    }

    /** @return the relaybox outbox, for its status, counts and dead letters */
    public Outbox getOutbox() {
        return outbox;
    }

    /** @return the DataSource whose transactions events join */
    public DataSource getDataSource() {
        return dataSource;
    }

    /**
     * Writes {@code message} in the current Spring-managed transaction.
     *
     * @param message the message
     * @return its id
     * @throws RelayboxSpringException (unchecked, so the transaction rolls
     *     back) whose cause is {@link RelayboxException.InvalidConfig} outside
     *     a transaction or a validation error for a bad message; nothing is
     *     written then
     */
    public String enqueue(MessageSpec message) {
        return enqueueBatch(List.of(message)).get(0);
    }

    /**
     * Writes all of {@code messages} in the current Spring-managed transaction: all or none.
     *
     * @param messages the messages
     * @return their ids, in order
     * @throws RelayboxSpringException (unchecked, so the transaction rolls
     *     back) whose cause is {@link RelayboxException.InvalidConfig} outside
     *     a transaction or a validation error for a bad message; nothing is
     *     written then
     */
    public List<String> enqueueBatch(List<MessageSpec> messages) {
        if (!TransactionSynchronizationManager.isActualTransactionActive()) {
            throw new RelayboxSpringException(new RelayboxException.InvalidConfig(
                    "RelayboxOutbox.enqueue needs a Spring-managed transaction (call it from a @Transactional "
                            + "method or a TransactionTemplate), so the event commits with your writes",
                    false,
                    null));
        }
        Connection connection = DataSourceUtils.getConnection(dataSource);
        try {
            return Jdbc.enqueueBatch(outbox, connection, messages);
        } catch (RelayboxException e) {
            throw new RelayboxSpringException(e);
        } finally {
            DataSourceUtils.releaseConnection(connection, dataSource);
        }
    }
}
