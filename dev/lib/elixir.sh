# Sourced by dev/elixir-test and dev/package: Elixir for the tests and the
# package check, from Debian (elixir, and erlang-dev for erl_nif.h, which the
# NIF's build needs), installed when mix, erl or the header is missing.
ensure_elixir() {
  if ! command -v mix >/dev/null 2>&1 || ! command -v erl >/dev/null 2>&1 \
    || [[ ! -f /usr/lib/erlang/usr/include/erl_nif.h ]]; then
    echo "==> elixir: apt-get install elixir erlang-dev"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq elixir erlang-dev
  fi
}
