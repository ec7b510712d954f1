package io.relaybox.spring;

import jakarta.persistence.Entity;
import jakarta.persistence.Id;
import jakarta.persistence.Table;

/** A business row written through JPA. */
@Entity
@Table(name = "relaybox_spring_orders")
public class ShopOrder {
    @Id
    private Integer id;

    private String item;

    /** For JPA. */
    protected ShopOrder() {}

    ShopOrder(int id, String item) {
        this.id = id;
        this.item = item;
    }

    Integer getId() {
        return id;
    }

    String getItem() {
        return item;
    }
}
