# dev/package: the Rust crates, relaybox and relaybox-cli, as crates.io
# receives them.
#
# `cargo package` builds each crate from its packaged sources (the CLI
# against the packaged core, through a local registry), which proves the
# files, manifests and versions are complete; the .crate files go to dist/.

package_rust() {
  # --allow-dirty: checks run on work in progress too; a release is built
  # from a clean, tagged checkout (docs/releasing.md). The core is built from
  # its packaged sources (its light default build); the CLI, whose build is
  # the workspace's own with every transport (cargo test builds it), is
  # packaged without that second build and its file list checked below.
  # Both in one run: the CLI's lock file names the core through the local
  # registry cargo makes of the packages it packs together.
  cargo package -q --allow-dirty --no-verify -p relaybox -p relaybox-cli
  cargo package -q --allow-dirty -p relaybox
  local crate
  for crate in relaybox relaybox-cli; do
    cp "$TARGET_DIR/package/$crate-$VERSION.crate" "$DIST/"
    record_artifact "$DIST/$crate-$VERSION.crate"
  done
}

# The packaged core, unpacked in a fresh place, has the README, the licence
# and the default features of a light build: no broker client among its
# normal dependencies.
check_rust() {
  tar -C "$CHECK_DIR" -xzf "$DIST/relaybox-$VERSION.crate"
  local crate="$CHECK_DIR/relaybox-$VERSION" file
  for file in README.md LICENSE Cargo.toml src/lib.rs migrations/postgres/0001_init.sql; do
    [[ -f "$crate/$file" ]] || {
      echo "check_rust: the relaybox crate has no $file" >&2
      return 1
    }
  done
  local deps
  deps="$(cargo tree -q --offline --manifest-path "$crate/Cargo.toml" -e normal --prefix none)"
  local client
  for client in rdkafka lapin redis aws-config reqwest; do
    if grep -q "^$client " <<<"$deps"; then
      echo "check_rust: the default build of relaybox depends on $client" >&2
      return 1
    fi
  done
  echo "    relaybox-$VERSION.crate: README, LICENSE, sources; default build without broker clients"
  # The packaged CLI has every source file the repository's has, and names
  # the core by version (crates.io has no path dependencies).
  local cli="$CHECK_DIR/relaybox-cli-$VERSION" source
  tar -C "$CHECK_DIR" -xzf "$DIST/relaybox-cli-$VERSION.crate"
  for file in README.md LICENSE Cargo.toml; do
    [[ -f "$cli/$file" ]] || {
      echo "check_rust: the relaybox-cli crate has no $file" >&2
      return 1
    }
  done
  while IFS= read -r source; do
    [[ -f "$cli/${source#"$ROOT/cli/"}" ]] || {
      echo "check_rust: the relaybox-cli crate has no ${source#"$ROOT/cli/"}" >&2
      return 1
    }
  done < <(find "$ROOT/cli/src" "$ROOT/cli/assets" -type f 2>/dev/null)
  grep -q "^\[dependencies.relaybox\]" "$cli/Cargo.toml" && grep -A3 "^\[dependencies.relaybox\]" "$cli/Cargo.toml" | grep -q "^version = \"$VERSION\"" || {
    echo "check_rust: the relaybox-cli crate does not name relaybox $VERSION" >&2
    return 1
  }
  echo "    relaybox-cli-$VERSION.crate: README, LICENSE, every source file; relaybox $VERSION by version"
}
