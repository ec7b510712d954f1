package io.relaybox

import org.junit.jupiter.api.AfterEach
import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.Assertions.assertTrue
import org.junit.jupiter.api.Assertions.fail
import org.junit.jupiter.api.Test
import java.io.File
import java.util.concurrent.TimeUnit

/** Closing every handle lets the JVM exit by itself: no thread of relaybox keeps it alive. */
class ExitTest {
    private val prefix = TestSupport.newPrefix()

    @AfterEach
    fun dropTables() = TestSupport.dropTables(prefix)

    @Test
    fun `a program that closes everything exits on its own`() {
        val java = File(System.getProperty("java.home"), "bin/java").path
        val classpath = System.getProperty("java.class.path")
        val output = File.createTempFile("relaybox-exit", ".log")
        val child =
            ProcessBuilder(java, "-cp", classpath, ExitMain::class.java.name, TestSupport.databaseUrl, prefix)
                .redirectErrorStream(true)
                .redirectOutput(output)
                .start()
        if (!child.waitFor(60, TimeUnit.SECONDS)) {
            child.destroyForcibly()
            fail<Unit>("the child JVM did not exit within 60 s after closing everything:\n${output.readText()}")
        }
        val log = output.readText()
        output.delete()
        assertEquals(0, child.exitValue(), log)
        assertTrue(log.contains("closed everything"), log)
    }
}
