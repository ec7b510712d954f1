defmodule Mix.Tasks.Compile.Cargo do
  @moduledoc """
  Builds the `relaybox_nif` crate with cargo (debug profile, or release when
  `RELAYBOX_NIF_PROFILE=release`) and copies the library into `priv/`, so that
  `mix compile` in a fresh clone builds everything. No hex package is needed.
  """
  use Mix.Task.Compiler

  @crate "relaybox_nif"

  @impl true
  def run(_args) do
    root = Path.expand("../..", __DIR__)
    release? = System.get_env("RELAYBOX_NIF_PROFILE") == "release"
    args = ["build", "-p", @crate] ++ if(release?, do: ["--release"], else: [])

    case System.cmd("cargo", args, cd: root, stderr_to_stdout: true) do
      {_output, 0} ->
        copy_library(root, if(release?, do: "release", else: "debug"))

      {output, status} ->
        Mix.shell().error(output)
        Mix.raise("cargo build -p #{@crate} failed with status #{status}")
    end
  end

  defp copy_library(root, profile) do
    target = System.get_env("CARGO_TARGET_DIR") || Path.join(root, "target")
    source = Path.join([target, profile, "lib#{@crate}.so"])
    priv = Path.join(__DIR__, "priv")
    dest = Path.join(priv, "lib#{@crate}.so")
    File.mkdir_p!(priv)

    if File.exists?(dest) and File.stat!(dest).mtime >= File.stat!(source).mtime and
         File.stat!(dest).size == File.stat!(source).size do
      Mix.Project.build_structure()
      {:noop, []}
    else
      File.rm(dest)
      File.cp!(source, dest)
      Mix.Project.build_structure()
      {:ok, []}
    end
  end
end

defmodule Relaybox.MixProject do
  use Mix.Project

  def project do
    [
      app: :relaybox,
      version: "0.1.0",
      elixir: "~> 1.14",
      compilers: [:cargo] ++ Mix.compilers(),
      start_permanent: Mix.env() == :prod,
      elixirc_paths: elixirc_paths(Mix.env()),
      deps: deps(),
      description:
        "Reliable event delivery for Elixir: transactional outbox, relay and idempotent consumer (Rust core)"
    ]
  end

  def application do
    [mod: {Relaybox.Application, []}, extra_applications: [:logger, :crypto, :inets]]
  end

  # `:telemetry` is required (relaybox emits its events through it). Ecto
  # and Postgrex are optional: `Relaybox.Ecto` and `repo:` consumers use
  # them when the application has them. Where hex.pm cannot be reached, their
  # source is taken from a folder of packages (one subfolder per package):
  # `RELAYBOX_HEX_VENDOR`, or `shared/vendor/hex` beside the repository.
  defp deps do
    case hex_vendor() do
      nil ->
        [
          {:telemetry, "~> 1.1"},
          {:ecto_sql, "~> 3.10", optional: true},
          {:postgrex, ">= 0.17.0", optional: true}
        ]

      dir ->
        for name <- ~w(ecto_sql postgrex ecto db_connection decimal telemetry jason)a do
          {name, path: Path.join(dir, Atom.to_string(name)), override: true}
        end
    end
  end

  defp hex_vendor do
    beside_repo = Path.expand("../../../shared/vendor/hex", __DIR__)

    case System.get_env("RELAYBOX_HEX_VENDOR", "") do
      "" -> if File.dir?(beside_repo), do: beside_repo
      dir -> Path.expand(dir)
    end
  end

  defp elixirc_paths(:test), do: ["lib", "test/support"]
  defp elixirc_paths(_), do: ["lib"]
end
