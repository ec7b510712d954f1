# shellcheck shell=bash
# The Elixir package (sourced by dev/package): the mix project with the NIF
# prebuilt for this platform, the layout of rustler_precompiled without its
# Hex package. dist/relaybox-elixir-<version>.tar.gz holds relaybox-<version>/
# with the files of mix.exs's package/0 (what `mix hex.build` would pack):
# mix.exs, lib/, README.md, LICENSE, the crate under native/relaybox_nif (its
# manifest made standalone, for a build from source), and
# priv/native/librelaybox_nif-v<version>-nif-<NIF version>-<target>.so with
# its sha256 in checksum-Elixir.Relaybox.Native.exs. The :cargo compiler of
# mix.exs uses that file when its checksum matches and never calls cargo.

# shellcheck source=dev/lib/elixir.sh
source "$ROOT/dev/lib/elixir.sh"

ELIXIR_SRC="$ROOT/bindings/elixir"
ELIXIR_TARBALL="$DIST/relaybox-elixir-$VERSION.tar.gz"

# The prebuilt NIF's file name: the NIF version is the one the crate asks
# rustler for (feature nif_version_X_Y), the target is rustc's host.
elixir_nif_name() {
  local nif_version target
  nif_version="$(grep -o 'nif_version_[0-9]*_[0-9]*' "$ELIXIR_SRC/native/relaybox_nif/Cargo.toml" \
    | head -1 | sed 's/^nif_version_//; s/_/./')"
  target="$(rustc -vV | sed -n 's/^host: //p')"
  printf 'librelaybox_nif-v%s-nif-%s-%s.so' "$VERSION" "$nif_version" "$target"
}

# The crate's manifest with the workspace's values written in (package
# fields, dependencies, the release profile), standalone: the crate builds
# outside the relaybox workspace. The internal relaybox-feature-union is
# left out (it only aligns features between the workspace's members).
elixir_standalone_manifest() {
  python3 - "$ROOT/Cargo.toml" "$ELIXIR_SRC/native/relaybox_nif/Cargo.toml" <<'PY'
import json
import sys
import tomllib

with open(sys.argv[1], "rb") as f:
    workspace = tomllib.load(f)
with open(sys.argv[2], "rb") as f:
    crate = tomllib.load(f)


def value(v):
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return str(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list):
        return "[" + ", ".join(value(x) for x in v) + "]"
    return "{ " + ", ".join(f"{k} = {value(x)}" for k, x in v.items()) + " }"


def dependency(name, spec):
    if not (isinstance(spec, dict) and spec.get("workspace")):
        return spec
    base = workspace["workspace"]["dependencies"][name]
    base = {"version": base} if isinstance(base, str) else dict(base)
    base.pop("path", None)
    for key, v in spec.items():
        if key == "features":
            base["features"] = base.get("features", []) + [x for x in v if x not in base.get("features", [])]
        elif key != "workspace":
            base[key] = v
    return base


print("# The relaybox_nif crate of the relaybox Hex package, standalone (made by")
print("# dev/package from the relaybox workspace's manifests).")
print("[package]")
for key, v in crate["package"].items():
    if isinstance(v, dict) and v.get("workspace"):
        v = workspace["workspace"]["package"][key]
    print(f"{key} = {value(v)}")
for section in ("lib",):
    print(f"\n[{section}]")
    for key, v in crate[section].items():
        print(f"{key} = {value(v)}")
print("\n[dependencies]")
for name, spec in crate["dependencies"].items():
    if name == "relaybox-feature-union":
        continue
    print(f"{name} = {value(dependency(name, spec))}")
print("\n[profile.release]")
for key, v in workspace["profile"]["release"].items():
    print(f"{key} = {value(v)}")
print("\n[workspace]")
PY
}

package_elixir() {
  (cd "$ROOT" && cargo build --release -p relaybox_nif "${HOOK_FEATURES[@]}")
  local name stage pkg sha
  name="$(elixir_nif_name)"
  stage="$(mktemp -d)"
  pkg="$stage/relaybox-$VERSION"
  mkdir -p "$pkg/priv/native" "$pkg/native/relaybox_nif"
  cp "$ELIXIR_SRC"/{mix.exs,.formatter.exs,README.md,LICENSE} "$pkg/"
  cp -R "$ELIXIR_SRC/lib" "$pkg/lib"
  cp -R "$ELIXIR_SRC/native/relaybox_nif/src" "$pkg/native/relaybox_nif/src"
  elixir_standalone_manifest >"$pkg/native/relaybox_nif/Cargo.toml"
  cp "$ROOT/Cargo.lock" "$pkg/native/relaybox_nif/Cargo.lock"
  cp "$RELEASE_DIR/librelaybox_nif.so" "$pkg/priv/native/$name"
  sha="$(sha256sum "$pkg/priv/native/$name" | cut -d' ' -f1)"
  printf '%%{\n  "%s" => "sha256:%s"\n}\n' "$name" "$sha" >"$pkg/checksum-Elixir.Relaybox.Native.exs"
  rm -f "$ELIXIR_TARBALL"
  tar -C "$stage" --sort=name --owner=0 --group=0 --numeric-owner -czf "$ELIXIR_TARBALL" "relaybox-$VERSION"
  echo "    priv/native/$name: $(stat -c %s "$pkg/priv/native/$name") bytes, sha256:$sha"
  rm -rf "$stage"
  record_artifact "$ELIXIR_TARBALL"
}

# mix in the smoke project as a user's shell runs it: no cargo, no relaybox
# checkout; Hex packages from the vendored sources (RELAYBOX_HEX_VENDOR)
# where hex.pm cannot be reached. Uses check_elixir's app, pkg and vendor.
elixir_smoke_mix() {
  (cd "$app" && env PATH="$NO_RUST_PATH" LC_ALL=C.UTF-8 MIX_ENV=prod \
    RELAYBOX_PACKAGE="$pkg" RELAYBOX_HEX_VENDOR="$vendor" mix "$@")
}

check_elixir() {
  local pkg="$CHECK_DIR/relaybox-$VERSION" app="$CHECK_DIR/smoke" name out vendor
  name="$(elixir_nif_name)"
  vendor="${RELAYBOX_HEX_VENDOR:-$(cd "$ROOT/.." && pwd)/shared/vendor/hex}"
  ensure_elixir
  tar -C "$CHECK_DIR" -xzf "$ELIXIR_TARBALL"
  mkdir -p "$app"
  cp "$ROOT/dev/package.d/smoke/elixir/"{mix.exs,smoke.exs} "$app/"

  out="$(elixir_smoke_mix compile 2>&1)" || {
    printf '%s\n' "$out" >&2
    return 1
  }
  [[ -f "$app/_build/prod/lib/relaybox/ebin/Elixir.Relaybox.Native.beam" ]]
  out="$(elixir_smoke_mix run --no-start --no-compile smoke.exs 2>&1)" || {
    printf '%s\n' "$out" >&2
    return 1
  }
  printf '    %s\n' "$out"
  grep -q '^smoke: delivered=1 handled=1 startup_ms=' <<<"$out"
  record_startup elixir "$out"

  # A NIF that does not match its checksum is refused, naming the file, both
  # when the package is compiled and when the library is loaded.
  printf 'x' >>"$pkg/priv/native/$name"
  if out="$(elixir_smoke_mix run --no-start --no-compile -e 'Relaybox.Native.version()' 2>&1)"; then
    echo "dev/package: the Elixir package loaded a NIF that does not match its checksum" >&2
    return 1
  fi
  grep -q "$name does not match its checksum" <<<"$out" || {
    printf '%s\n' "$out" >&2
    return 1
  }
  if out="$(elixir_smoke_mix deps.compile relaybox 2>&1)"; then
    echo "dev/package: the Elixir package compiled with a NIF that does not match its checksum" >&2
    return 1
  fi
  grep -q "precompiled NIF .*$name does not match its checksum" <<<"$out" || {
    printf '%s\n' "$out" >&2
    return 1
  }
  echo "    a changed NIF is refused at compile time and at load, naming $name"
}
