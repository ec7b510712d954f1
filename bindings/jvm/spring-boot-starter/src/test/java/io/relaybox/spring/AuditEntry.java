package io.relaybox.spring;

import jakarta.persistence.Column;
import jakarta.persistence.Entity;
import jakarta.persistence.Id;
import jakarta.persistence.Table;

/** What the consumer's handler writes through JPA for each message. */
@Entity
@Table(name = "relaybox_spring_audit")
public class AuditEntry {
    @Id
    @Column(name = "message_id")
    private String messageId;

    @Column(name = "event_type")
    private String eventType;

    /** For JPA. */
    protected AuditEntry() {}

    AuditEntry(String messageId, String eventType) {
        this.messageId = messageId;
        this.eventType = eventType;
    }

    String getMessageId() {
        return messageId;
    }

    String getEventType() {
        return eventType;
    }
}
