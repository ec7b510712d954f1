# A fresh application that depends on the unpacked relaybox package
# (RELAYBOX_PACKAGE: its directory), as a user's mix project would depend on
# {:relaybox, "~> 0.1"} from Hex. dev/package --check elixir runs smoke.exs
# with it, with no Rust toolchain on PATH.
defmodule Smoke.MixProject do
  use Mix.Project

  def project do
    [
      app: :smoke,
      version: "0.1.0",
      elixir: "~> 1.14",
      deps: [{:relaybox, path: System.fetch_env!("RELAYBOX_PACKAGE")}]
    ]
  end

  def application, do: [extra_applications: [:logger]]
end
