# shellcheck shell=bash
# Node: the `relaybox` npm package as `npm pack` makes it, with the prebuilt
# addon for this platform inside, and the per-platform package in the layout
# napi-rs uses (bindings/node/npm/<platform>/); sourced by dev/package.
#
# index.js (napi-rs's loader) loads ./relaybox.<platform>.node beside it
# first and the `relaybox-<platform>` package second, so the main tarball
# installs and runs on its own; a registry release publishes both, with the
# platform packages as optionalDependencies of the main one (`napi
# pre-publish` adds them when publishing).

NODE_PLATFORM="linux-x64-gnu"

package_node() {
  local node_dir="$ROOT/bindings/node"
  local addon="relaybox.$NODE_PLATFORM.node"
  rm -f "$DIST/relaybox-$VERSION.tgz" "$DIST/relaybox-$NODE_PLATFORM-$VERSION.tgz"
  (
    cd "$node_dir"
    if [[ ! -x node_modules/.bin/napi ]]; then
      npm install --ignore-scripts --no-audit --no-fund --loglevel=error
    fi
    # The build writes index.js and index.d.ts for the addon it builds: the
    # package gets those (a release's declare no test hook), and the tree
    # gets back its own, those of the test build (dev/node-test checks them).
    local tree_files
    tree_files="$(mktemp -d)"
    cp index.js index.d.ts "$tree_files/"
    # scripts/cargo-host builds in the shared target directory (see there).
    CARGO="$node_dir/scripts/cargo-host" CARGO_TARGET_DIR="$TARGET_DIR" npm run --silent build -- \
      "${HOOK_FEATURES[@]}"
    # --ignore-scripts: `prepare` would build the addon again.
    npm pack --ignore-scripts --silent --pack-destination "$DIST" >/dev/null
    cp "$tree_files/index.js" "$tree_files/index.d.ts" .
    rm -rf "$tree_files"
  )
  node_check_tarball "$DIST/relaybox-$VERSION.tgz" "package/$addon" package/index.js \
    package/lib/relaybox.js package/LICENSE package/README.md

  # The per-platform package: bindings/node/npm/<platform>/ (from `napi
  # create-npm-dirs`) with the addon and the licence, packed from a copy.
  local stage="$DIST/.node-$NODE_PLATFORM"
  rm -rf "$stage"
  cp -r "$node_dir/npm/$NODE_PLATFORM" "$stage"
  cp "$node_dir/$addon" "$node_dir/LICENSE" "$stage/"
  (cd "$stage" && npm pack --ignore-scripts --silent --pack-destination "$DIST" >/dev/null)
  rm -rf "$stage"
  node_check_tarball "$DIST/relaybox-$NODE_PLATFORM-$VERSION.tgz" "package/$addon" package/LICENSE

  record_artifact "$DIST/relaybox-$VERSION.tgz"
  record_artifact "$DIST/relaybox-$NODE_PLATFORM-$VERSION.tgz"
}

# node_check_tarball TGZ FILE...: fails unless TGZ holds every FILE.
node_check_tarball() {
  local tgz="$1" listing file missing=()
  shift
  listing="$(tar -tzf "$tgz")"
  for file in "$@"; do
    grep -qx "$file" <<<"$listing" || missing+=("$file")
  done
  if ((${#missing[@]})); then
    echo "dev/package: $tgz lacks: ${missing[*]}" >&2
    return 1
  fi
}

check_node() {
  local out
  (
    cd "$CHECK_DIR"
    export PATH="$NO_RUST_PATH"
    npm init -y >/dev/null
    # Scripts stay enabled, as for a user: an install or build script that
    # needed cargo would fail here. The package has no dependencies, so
    # nothing comes from the registry.
    npm install --offline --no-audit --no-fund --loglevel=error "$DIST/relaybox-$VERSION.tgz"
    cp "$ROOT/dev/package.d/smoke/smoke.mjs" .
  )
  out="$(cd "$CHECK_DIR" && PATH="$NO_RUST_PATH" node smoke.mjs)"
  echo "    $out"
  record_startup node "$out"

  # The per-platform package on its own: its addon loads and answers.
  local platform_dir="$CHECK_DIR/platform"
  mkdir -p "$platform_dir"
  (
    cd "$platform_dir"
    export PATH="$NO_RUST_PATH"
    npm init -y >/dev/null
    npm install --offline --no-audit --no-fund --loglevel=error \
      "$DIST/relaybox-$NODE_PLATFORM-$VERSION.tgz"
    node -e "
      const addon = require('relaybox-$NODE_PLATFORM')
      if (addon.nativeVersion() !== '$VERSION') throw new Error('relaybox-$NODE_PLATFORM: version ' + addon.nativeVersion())
      console.log('    relaybox-$NODE_PLATFORM ' + addon.nativeVersion() + ': the addon loads')
    "
  )
}
