# dev/package: the C library (crate relaybox-ffi), for C and Go programs.
#
# dist/relaybox-c-<version>-<target>.tar.gz unpacks to one folder:
#   include/relaybox.h
#   lib/librelaybox.so, lib/librelaybox.a
#   lib/pkgconfig/relaybox.pc          (the shared library)
#   lib/pkgconfig/relaybox-static.pc   (the static library and what it links)
#   LICENSE, README.md
# The .pc files locate the folder from their own place (${pcfiledir}), so
# the tree works wherever it is unpacked, /usr/local included.

C_TARGET="x86_64-unknown-linux-gnu"
C_NAME="relaybox-c-$VERSION-$C_TARGET"

# The system libraries the static library needs (rustc
# --print native-static-libs for relaybox-ffi, plus OpenSSL and zlib, which
# librdkafka and lapin link).
C_STATIC_LIBS="-lssl -lcrypto -lz -lgcc_s -lutil -lrt -lpthread -lm -ldl -lc"

package_c() {
  cargo build --release -q -p relaybox-ffi "${HOOK_FEATURES[@]}"
  local tree="$DIST/$C_NAME"
  rm -rf "$tree" "$tree.tar.gz"
  mkdir -p "$tree/include" "$tree/lib/pkgconfig"
  cp "$ROOT/bindings/c/include/relaybox.h" "$tree/include/"
  cp "$RELEASE_DIR/librelaybox_ffi.so" "$tree/lib/librelaybox.so"
  cp "$RELEASE_DIR/librelaybox_ffi.a" "$tree/lib/librelaybox.a"
  # The static library keeps the symbols a linker needs and nothing more.
  strip --strip-debug "$tree/lib/librelaybox.a"
  cp "$ROOT/LICENSE" "$tree/"
  c_pc_file shared >"$tree/lib/pkgconfig/relaybox.pc"
  c_pc_file static >"$tree/lib/pkgconfig/relaybox-static.pc"
  cat >"$tree/README.md" <<EOF
# relaybox $VERSION for C ($C_TARGET)

    export PKG_CONFIG_PATH=\$PWD/lib/pkgconfig
    cc app.c \$(pkg-config --cflags --libs relaybox)            # shared
    cc app.c \$(pkg-config --cflags --libs relaybox-static)     # static

The shared library's runtime needs are glibc, OpenSSL 3 (libssl3) and zlib.
The API is documented in include/relaybox.h; the guide is docs/c.md of the
relaybox repository. Go programs use the module in bindings/go, which finds
this library through pkg-config.
EOF
  tar -C "$DIST" -czf "$tree.tar.gz" "$C_NAME"
  record_artifact "$tree.tar.gz"
  record_artifact "$tree/lib/librelaybox.so"
}

# c_pc_file shared|static: the pkg-config file of one of the libraries.
c_pc_file() {
  cat <<EOF
prefix=\${pcfiledir}/../..
libdir=\${prefix}/lib
includedir=\${prefix}/include

Name: relaybox$([[ $1 == static ]] && printf -- '-static')
Description: Transactional outbox, relay and idempotent consumer (C ABI of relaybox)
Version: $VERSION
Cflags: -I\${includedir}
EOF
  if [[ $1 == static ]]; then
    echo "Libs: \${libdir}/librelaybox.a $C_STATIC_LIBS"
  else
    echo "Libs: -L\${libdir} -Wl,-rpath,\${libdir} -lrelaybox"
  fi
}

check_c() {
  tar -C "$CHECK_DIR" -xzf "$DIST/$C_NAME.tar.gz"
  local pc="$CHECK_DIR/$C_NAME/lib/pkgconfig" work="$CHECK_DIR/work" out
  mkdir -p "$work"
  for variant in relaybox relaybox-static; do
    PATH="$NO_RUST_PATH" PKG_CONFIG_PATH="$pc" bash -c '
      set -euo pipefail
      gcc -std=c11 -D_DEFAULT_SOURCE -O1 -Wall -Wextra -Werror -o "$1/smoke-$2" \
        "$3/dev/package.d/smoke/smoke.c" $(pkg-config --cflags --libs "$2")' \
      _ "$work" "$variant" "$ROOT"
    rm -f "$work/smoke.db"*
    out="$(PATH="$NO_RUST_PATH" "$work/smoke-$variant" "$work")"
    echo "    $variant: $out"
    record_startup "c${variant#relaybox}" "$out"
  done
  # The shared build runs from the unpacked tree alone (its rpath), not a
  # library of the cargo target directory.
  if ldd "$work/smoke-relaybox" | grep -q "$TARGET_DIR"; then
    echo "check_c: the program links a library of $TARGET_DIR" >&2
    return 1
  fi
  # A release's library exports no test hook (dev/package without RELAYBOX_TEST_HOOKS=1).
  if ((TEST_HOOKS == 0)); then
    local hooks
    hooks="$(nm -D --defined-only "$CHECK_DIR/$C_NAME/lib/librelaybox.so" | grep -o 'relaybox__[a-z_]*_for_tests' || true)"
    if [[ -n "$hooks" ]]; then
      echo "check_c: the library exports the test hooks: $hooks" >&2
      return 1
    fi
    echo "    the library exports no test hook"
  fi
}
