package io.relaybox

import org.slf4j.Logger
import org.slf4j.LoggerFactory
import org.slf4j.event.Level

/**
 * Forwards the log records of the relaybox core (relays, consumers, their
 * broker clients) to SLF4J. Call [install] once at startup (the Spring Boot
 * starter does it for you); until then the core's records are not logged.
 *
 * Each record goes to the logger named after its origin: the core's
 * `relaybox::relay` to `relaybox.relay`, `relaybox::consumer` to
 * `relaybox.consumer`, and a library of the core (librdkafka) to
 * `relaybox.deps.librdkafka`. The message is the record's text followed by
 * its fields (`relaybox message dead-lettered id=... attempts=1 error=...`),
 * and every field is also an SLF4J key-value pair (`id`, `attempts`,
 * `error`, ...), as is `relaybox.thread`, the native thread that logged.
 *
 * The core never waits for SLF4J: records travel through a bounded queue
 * to a native thread (`relaybox-log`), which calls the appenders. When they
 * do not keep up, further records are dropped and counted, and a warning
 * `relaybox log records dropped` (key `dropped`) follows.
 */
object Slf4jLogging {
    /** The logger whose level [install] follows by default. */
    private val root: Logger = LoggerFactory.getLogger("relaybox")

    /**
     * Starts forwarding records at [level] (`"error"`, `"warn"`, `"info"`,
     * `"debug"` or `"trace"`) and above; by default, at the most verbose
     * level the `relaybox` logger has enabled when this is called. Records
     * of the core's libraries pass at `"warn"` and above only. Calling it
     * again changes the level.
     */
    @JvmStatic
    @JvmOverloads
    fun install(level: String = levelOf(root)) {
        setLogSink(Sink, level)
    }

    /** Stops forwarding. */
    @JvmStatic
    fun uninstall() {
        setLogSink(null, "off")
    }

    /** Records dropped because the appenders did not keep up, since the process started. */
    @JvmStatic
    fun droppedRecords(): Long = logRecordsDropped().toLong()

    /** The SLF4J logger name of a core target: `relaybox::relay` → `relaybox.relay`. */
    @JvmStatic
    fun loggerName(target: String): String {
        val dotted = target.replace("::", ".")
        val core = target == "relaybox" || target.startsWith("relaybox::")
        return when {
            core -> dotted
            dotted.isEmpty() -> "relaybox.deps"
            else -> "relaybox.deps.$dotted"
        }
    }

    private fun levelOf(logger: Logger): String =
        when {
            logger.isTraceEnabled -> "trace"
            logger.isDebugEnabled -> "debug"
            logger.isInfoEnabled -> "info"
            logger.isWarnEnabled -> "warn"
            logger.isErrorEnabled -> "error"
            else -> "off"
        }

    private fun slf4jLevel(level: String): Level =
        when (level) {
            "error" -> Level.ERROR
            "warn" -> Level.WARN
            "info" -> Level.INFO
            "debug" -> Level.DEBUG
            else -> Level.TRACE
        }

    private fun emit(record: LogRecord) {
        val logger = LoggerFactory.getLogger(loggerName(record.target))
        val level = slf4jLevel(record.level)
        if (!logger.isEnabledForLevel(level)) return
        var event = logger.atLevel(level).setMessage(record.text)
        for (field in record.fields) event = event.addKeyValue(field.name, field.value)
        event.addKeyValue("relaybox.thread", record.thread).log()
    }

    /** Runs on the native `relaybox-log` thread; an appender's exception loses only its record. */
    private object Sink : LogSink {
        override fun log(records: List<LogRecord>) {
            for (record in records) {
                try {
                    emit(record)
                } catch (_: Exception) {
                    // Logging must never fail the core's log thread.
                }
            }
        }
    }
}
