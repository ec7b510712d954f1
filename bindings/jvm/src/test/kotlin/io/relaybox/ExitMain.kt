package io.relaybox

import kotlinx.coroutines.runBlocking
import kotlin.system.exitProcess

/**
 * A whole program run in a child JVM by [ExitTest]: forward the core's logs
 * to SLF4J, enqueue, relay, consume, close everything, and return from
 * `main`. The JVM must then exit on its own (the native log thread that calls
 * into the JVM does not keep it alive).
 */
object ExitMain {
    @JvmStatic
    fun main(args: Array<String>) {
        val (url, prefix) = args
        val topic = "${prefix}exit".replace('_', '-')
        Slf4jLogging.install("info")
        Outbox.openBlocking(url, """{"table_prefix": "$prefix"}""", migrate = true).use { outbox ->
            runBlocking { outbox.transaction { tx -> tx.enqueue(textMessage(topic, "bye")) } }
            Relay.start(outbox).use { relay ->
                Consumer.start(outbox, Transports.database(), topic, """{"group": "exit"}""", messageHandler { _, _ -> }).use { consumer ->
                    val deadline = System.nanoTime() + 30_000_000_000L
                    while (consumer.stats().processed < 1L) {
                        if (System.nanoTime() > deadline) {
                            System.err.println("not consumed: relay ${relay.stats()}, consumer ${consumer.stats()}")
                            exitProcess(2)
                        }
                        Thread.sleep(20)
                    }
                }
            }
        }
        println("closed everything")
    }
}
