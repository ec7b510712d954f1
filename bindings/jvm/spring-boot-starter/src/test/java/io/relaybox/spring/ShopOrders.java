package io.relaybox.spring;

import org.springframework.data.jpa.repository.JpaRepository;

/** The JPA repository of orders. */
public interface ShopOrders extends JpaRepository<ShopOrder, Integer> {}
