# shellcheck shell=bash
# The JVM package (sourced by dev/package): the jar of the Maven project
# bindings/jvm with the release native library of its crate
# (bindings/jvm/native) for this platform inside (linux-x86-64/, where JNA
# finds it on the classpath and extracts it), its pom (licence, SCM,
# developers) and its sources jar, as dist/relaybox-<version>.jar,
# relaybox-<version>.pom and relaybox-<version>-sources.jar: the files a
# Maven repository holds for io.relaybox:relaybox:<version>.

JVM_SRC="$ROOT/bindings/jvm"
JVM_JAR="$DIST/relaybox-$VERSION.jar"
JVM_POM="$DIST/relaybox-$VERSION.pom"
JVM_SOURCES="$DIST/relaybox-$VERSION-sources.jar"
JVM_NATIVE="linux-x86-64/librelaybox_uniffi.so"

# Maven, quiet: its output is shown only when it fails.
jvm_mvn() {
  local out
  out="$(mvn -B -q -ntp "$@" 2>&1)" || {
    printf '%s\n' "$out" >&2
    return 1
  }
}

package_jvm() {
  # The Maven build runs cargo (release profile) in the same target
  # directory as the other languages; tests and ktlint are dev/jvm-test's.
  local features=""
  ((TEST_HOOKS)) && features=test-hooks
  (cd "$JVM_SRC" && jvm_mvn package -Dmaven.test.skip=true -Drelaybox.targetDir="$TARGET_DIR" \
    -Drelaybox.cargoFeatures="$features")
  cp "$JVM_SRC/target/relaybox-$VERSION.jar" "$JVM_JAR"
  cp "$JVM_SRC/target/relaybox-$VERSION-sources.jar" "$JVM_SOURCES"
  cp "$JVM_SRC/pom.xml" "$JVM_POM"
  # The jar carries the release library, stripped of its symbols (cargo
  # keeps them for uniffi-bindgen: the root Cargo.toml, bindings/jvm/pom.xml).
  local native
  native="$(mktemp)"
  unzip -p "$JVM_JAR" "$JVM_NATIVE" >"$native"
  if [[ ! -s "$native" ]] || readelf -S "$native" | grep -q '\.symtab'; then
    echo "dev/package: $JVM_JAR does not hold a stripped $JVM_NATIVE" >&2
    rm -f "$native"
    return 1
  fi
  echo "    $JVM_NATIVE: $(stat -c %s "$native") bytes (stripped)"
  rm -f "$native"
  unzip -l "$JVM_JAR" META-INF/LICENSE >/dev/null
  record_artifact "$JVM_JAR"
  record_artifact "$JVM_SOURCES"
}

check_jvm() {
  local repo="$CHECK_DIR/m2" app="$CHECK_DIR/smoke" out log classpath
  # A fresh local repository: the jar with its pom, and its dependencies
  # (Kotlin, coroutines, JNA, SLF4J) resolved from Maven Central.
  jvm_mvn -Dmaven.repo.local="$repo" \
    org.apache.maven.plugins:maven-install-plugin:3.1.4:install-file \
    -Dfile="$JVM_JAR" -DpomFile="$JVM_POM" -Dsources="$JVM_SOURCES"
  mkdir -p "$app"
  cp -R "$ROOT/dev/package.d/smoke/jvm/." "$app/"
  (cd "$app" && export PATH="$NO_RUST_PATH" && jvm_mvn -Dmaven.repo.local="$repo" \
    -Drelaybox.version="$VERSION" compile \
    org.apache.maven.plugins:maven-dependency-plugin:3.8.1:build-classpath \
    -Dmdep.outputFile="$app/classpath.txt")
  classpath="$app/target/classes:$(cat "$app/classpath.txt")"
  grep -q "relaybox-$VERSION.jar" <<<"$classpath"

  # A user's shell: no cargo, no library path; JNA reports where it found
  # the library (jna.debug_load), which must be the jar.
  log="$app/jna.log"
  out="$(cd "$app" && env -u LD_LIBRARY_PATH PATH="$NO_RUST_PATH" \
    java -Djna.debug_load=true -cp "$classpath" Smoke 2>"$log")" || {
    printf '%s\n' "$out" >&2
    cat "$log" >&2
    return 1
  }
  printf '    %s\n' "$out"
  grep -q '^smoke: delivered=1 handled=1 startup_ms=' <<<"$out"
  grep -q "relaybox-$VERSION.jar!/$JVM_NATIVE" "$log" || {
    echo "dev/package: the JVM program did not load $JVM_NATIVE from the jar:" >&2
    cat "$log" >&2
    return 1
  }
  echo "    native library loaded from the jar's $JVM_NATIVE"
  record_startup jvm "$out"
}
