package io.relaybox.spring;

import org.springframework.data.jpa.repository.JpaRepository;

/** The JPA repository of audit entries. */
public interface AuditEntries extends JpaRepository<AuditEntry, String> {}
