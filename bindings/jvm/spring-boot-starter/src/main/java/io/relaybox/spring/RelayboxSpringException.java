package io.relaybox.spring;

import io.relaybox.Relaybox;
import io.relaybox.RelayboxException;

/**
 * A relaybox error inside Spring: unchecked, so that a {@code @Transactional}
 * method it leaves rolls back (Spring rolls back on unchecked exceptions
 * only). The typed {@link RelayboxException} is its cause; {@link #getCode()}
 * is its stable code ({@code invalid_topic}, {@code invalid_config}, ...).
 */
public class RelayboxSpringException extends RuntimeException {
    private static final long serialVersionUID = 1L;

    /** The stable code of the cause. */
    private final String code;

    /**
     * Wraps {@code cause}.
     *
     * @param cause the relaybox error
     */
    public RelayboxSpringException(RelayboxException cause) {
        super(cause.getMessage(), cause);
        this.code = Relaybox.getCode(cause);
    }

    /** @return the stable error code, e.g. {@code invalid_config} */
    public String getCode() {
        return code;
    }

    /** @return the typed relaybox error */
    public RelayboxException getRelayboxException() {
        return (RelayboxException) getCause();
    }
}
