defmodule Mix.Tasks.Compile.Cargo do
  @moduledoc """
  Provides the `relaybox_nif` NIF, without cargo when the package carries it
  prebuilt.

  A package made by `dev/package` holds the NIF built for a platform in
  `priv/native/` (`librelaybox_nif-v<version>-nif-<NIF version>-<target>.so`)
  and each such file's sha256 in `checksum-Elixir.Relaybox.Native.exs`. When
  the file for this platform and this runtime's NIF version is there and its
  sha256 is the one listed, it is used and cargo is never called (a different
  sha256 is an error naming the file; `Relaybox.Native` checks it again when it
  loads the library). Otherwise the crate is built with cargo, in the release
  profile (`RELAYBOX_NIF_PROFILE=debug`: the debug profile), and the library is
  copied to `priv/librelaybox_nif.so`: `cargo build -p relaybox_nif` in the
  relaybox workspace of a source checkout, else the crate in
  `native/relaybox_nif`. `CARGO_TARGET_DIR` is honoured. With `MIX_ENV=test`
  the build has the cargo feature `test-hooks` (the NIF's test hooks).
  """
  use Mix.Task.Compiler

  @crate "relaybox_nif"

  @impl true
  def run(_args) do
    case precompiled() do
      {:ok, path} ->
        Mix.Project.build_structure()
        Mix.shell().info("relaybox: precompiled NIF #{Path.relative_to(path, __DIR__)}")
        {:noop, []}

      :none ->
        build_with_cargo()
    end
  end

  # The precompiled NIF for this platform and its checksum check.
  defp precompiled do
    checksum_file = Path.join(__DIR__, "checksum-Elixir.Relaybox.Native.exs")
    dir = Path.join([__DIR__, "priv", "native"])

    checksums =
      if File.exists?(checksum_file),
        do: checksum_file |> Code.eval_file() |> elem(0),
        else: %{}

    candidates =
      for {name, _} <- checksums,
          version = nif_version(name),
          version != nil and Version.compare(version, runtime_nif_version()) != :gt,
          File.exists?(Path.join(dir, name)),
          do: {version, name}

    case Enum.max_by(candidates, &elem(&1, 0), Version, fn -> nil end) do
      nil ->
        :none

      {_, name} ->
        path = Path.join(dir, name)
        actual = "sha256:" <> Base.encode16(:crypto.hash(:sha256, File.read!(path)), case: :lower)

        if actual != checksums[name] do
          Mix.raise(
            "relaybox: the precompiled NIF #{path} does not match its checksum in " <>
              "#{checksum_file} (expected #{checksums[name]}, found #{actual}); " <>
              "remove the file to build from source with cargo"
          )
        end

        {:ok, path}
    end
  end

  # "librelaybox_nif-v0.1.0-nif-2.16-x86_64-unknown-linux-gnu.so" -> 2.16.0,
  # when the name is this package's version and this platform's target.
  defp nif_version(name) do
    prefix = "lib#{@crate}-v#{Mix.Project.config()[:version]}-nif-"
    suffix = "-#{target()}.so"

    with true <- String.starts_with?(name, prefix) and String.ends_with?(name, suffix),
         middle = binary_part(name, byte_size(prefix), byte_size(name) - byte_size(prefix)),
         [major, minor] <- middle |> String.replace_suffix(suffix, "") |> String.split(".") do
      Version.parse!("#{major}.#{minor}.0")
    else
      _ -> nil
    end
  end

  defp runtime_nif_version do
    [major, minor] = :nif_version |> :erlang.system_info() |> to_string() |> String.split(".")
    Version.parse!("#{major}.#{minor}.0")
  end

  # The Rust target triple of this VM's platform.
  defp target do
    case :system_architecture |> :erlang.system_info() |> to_string() |> String.split("-") do
      [cpu, _vendor, "linux", abi | _] -> "#{cpu}-unknown-linux-#{abi}"
      [cpu, _vendor, "linux"] -> "#{cpu}-unknown-linux-gnu"
      ["arm64", "apple", "darwin" <> _ | _] -> "aarch64-apple-darwin"
      [cpu, "apple", "darwin" <> _ | _] -> "#{cpu}-apple-darwin"
      parts -> Enum.join(parts, "-")
    end
  end

  defp build_with_cargo do
    debug? = System.get_env("RELAYBOX_NIF_PROFILE") == "debug"
    profile_args = if debug?, do: [], else: ["--release"]
    # The test hooks (`panic_for_tests`, `log_for_tests`, cargo feature
    # `test-hooks`) are in the NIF of the test environment only.
    profile_args =
      if Mix.env() == :test, do: ["--features", "test-hooks" | profile_args], else: profile_args

    workspace = Path.expand("../..", __DIR__)

    {dir, args, default_target} =
      if checkout?(workspace) do
        {workspace, ["build", "-p", @crate], Path.join(workspace, "target")}
      else
        crate = Path.join([__DIR__, "native", @crate])
        {crate, ["build"], Path.join(crate, "target")}
      end

    if System.find_executable("cargo") == nil do
      Mix.raise(
        "relaybox: no precompiled NIF for #{target()} in #{Path.join(__DIR__, "priv/native")} " <>
          "and no cargo on PATH to build it (install Rust: https://rustup.rs)"
      )
    end

    case System.cmd("cargo", args ++ profile_args, cd: dir, stderr_to_stdout: true) do
      {_output, 0} ->
        target_dir = System.get_env("CARGO_TARGET_DIR") || default_target
        copy_library(Path.join([target_dir, if(debug?, do: "debug", else: "release")]))

      {output, status} ->
        Mix.shell().error(output)
        Mix.raise("cargo #{Enum.join(args ++ profile_args, " ")} failed with status #{status}")
    end
  end

  # A source checkout: this project is the workspace member bindings/elixir.
  defp checkout?(workspace) do
    manifest = Path.join(workspace, "Cargo.toml")
    File.exists?(manifest) and File.read!(manifest) =~ "bindings/elixir/native/#{@crate}"
  end

  defp copy_library(profile_dir) do
    source = Path.join(profile_dir, "lib#{@crate}.so")
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

  # The workspace's `repository` (Cargo.toml).
  @repository "https://github.com/relaybox/relaybox"

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
        "Reliable event delivery for Elixir: transactional outbox, relay and idempotent consumer (Rust core)",
      package: package(),
      source_url: @repository
    ]
  end

  # The files of the Hex package, as `mix hex.build` would take them:
  # dev/package makes this tree (relaybox-elixir-<version>.tar.gz) with the
  # NIF prebuilt for its platform under priv/native/ and the checksum file,
  # and the crate's manifest made standalone for a build from source.
  defp package do
    [
      licenses: ["Apache-2.0"],
      links: %{"Source" => @repository},
      files: ~w(mix.exs .formatter.exs lib native/relaybox_nif/Cargo.toml
                native/relaybox_nif/Cargo.lock native/relaybox_nif/src priv/native
                checksum-Elixir.Relaybox.Native.exs README.md LICENSE)
    ]
  end

  def application do
    [mod: {Relaybox.Application, []}, extra_applications: [:logger, :crypto, :inets]]
  end

  # `:telemetry` is required (relaybox emits its events through it). Ecto
  # and Postgrex are optional: `Relaybox.Ecto` and `repo:` consumers use
  # them when the application has them. Where hex.pm cannot be reached, their
  # source is taken from a folder of packages (one subfolder per package):
  # `RELAYBOX_HEX_VENDOR`, or `shared/vendor/hex` beside the repository;
  # all of them but `telemetry` are optional there too.
  defp deps do
    case hex_vendor() do
      nil ->
        [
          {:telemetry, "~> 1.1"},
          {:ecto_sql, "~> 3.10", optional: true},
          {:postgrex, ">= 0.17.0", optional: true},
          # The tests read tests/fixtures (JSON).
          {:jason, "~> 1.4", only: :test}
        ]

      dir ->
        for name <- ~w(ecto_sql postgrex ecto db_connection decimal telemetry jason)a do
          {name,
           path: Path.join(dir, Atom.to_string(name)),
           override: true,
           optional: name != :telemetry}
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
