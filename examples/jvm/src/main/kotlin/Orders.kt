// An order service in a few lines: an order and its OrderPlaced event are
// written in one transaction, the relay delivers the event (to Kafka when
// RELAYBOX_KAFKA_BOOTSTRAP is set, else through the database), and a consumer
// marks the order shipped exactly once. The event is a data class, written
// and read as JSON by Jackson.

import io.relaybox.Consumer
import io.relaybox.Outbox
import io.relaybox.Relay
import io.relaybox.SqlValue
import io.relaybox.Transports
import io.relaybox.suspendJsonHandler
import io.relaybox.transaction
import io.relaybox.valueMessage
import kotlinx.coroutines.delay
import kotlinx.coroutines.runBlocking
import kotlinx.coroutines.withTimeout
import java.util.UUID

/** The event of a placed order. */
data class OrderPlaced(
    val orderId: String,
)

fun main() =
    runBlocking {
        val url = System.getenv("RELAYBOX_DATABASE_URL") ?: "postgres://postgres@127.0.0.1:5432/relaybox"
        val kafka = System.getenv("RELAYBOX_KAFKA_BOOTSTRAP")
        val transport = if (kafka.isNullOrBlank()) Transports.database() else Transports.kafka(kafka, createTopics = true)
        val run = UUID.randomUUID().toString().take(8)
        val topic = "example-jvm-orders-$run"

        Outbox.open(url, """{"table_prefix": "example_jvm_"}""", migrate = true).use { outbox ->
            outbox.transaction { tx ->
                tx.execute(
                    "CREATE TABLE IF NOT EXISTS example_jvm_orders (id text PRIMARY KEY, shipped boolean NOT NULL DEFAULT false)",
                    listOf(),
                )
            }
            val orderId = "order-$run"
            outbox.transaction { tx ->
                tx.execute("INSERT INTO example_jvm_orders (id) VALUES (\$1)", listOf(SqlValue.Text(orderId)))
                tx.enqueue(valueMessage(topic, OrderPlaced(orderId), key = orderId, type = "OrderPlaced"))
            }
            val backlog = outbox.status().topics.single { it.topic == topic }
            println("placed $orderId (${backlog.pending} pending on ${backlog.topic})")

            val ship =
                suspendJsonHandler<OrderPlaced> { event, message, tx ->
                    tx.execute("UPDATE example_jvm_orders SET shipped = true WHERE id = \$1", listOf(SqlValue.Text(event.orderId)))
                    println("shipped ${event.orderId} (event ${message.id})")
                }
            Relay.start(outbox, transport).use {
                Consumer.startSuspending(outbox, transport, topic, """{"group": "example-jvm-shipping"}""", ship).use { consumer ->
                    withTimeout(60_000) { while (consumer.stats().processed < 1L) delay(20) }
                }
            }
            val shipped =
                outbox.transaction { tx ->
                    tx.query("SELECT shipped FROM example_jvm_orders WHERE id = \$1", listOf(SqlValue.Text(orderId)))
                }
            check(shipped.single().values.single() == SqlValue.Bool(true)) { "order not shipped: $shipped" }
            println("done")
        }
    }
