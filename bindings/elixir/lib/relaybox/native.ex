defmodule Relaybox.Native do
  @moduledoc """
  The NIF (`relaybox_nif`, a rustler crate: prebuilt in a package, else built
  by the `:cargo` compiler in `mix.exs`) and the helpers that turn its replies
  into plain results.

  This module is internal: use `Relaybox.Outbox`, `Relaybox.Tx`,
  `Relaybox.Relay` and `Relaybox.Consumer`. Calls that touch the database or a
  broker return `:ok` at once and the core sends `{ref, result}` to the caller
  when done; `call/1` waits for that reply in the calling process.
  """

  @on_load :load_nif

  # A package made by dev/package carries the NIF prebuilt for a platform in
  # priv/native/ and each file's sha256 in this checksum file (read when this
  # module is compiled); a source build puts priv/librelaybox_nif.so there.
  @checksum_file Path.expand("../../checksum-Elixir.Relaybox.Native.exs", __DIR__)
  @external_resource @checksum_file
  @checksums if File.exists?(@checksum_file),
               do: @checksum_file |> Code.eval_file() |> elem(0),
               else: %{}
  @version Mix.Project.config()[:version]

  @doc false
  def load_nif do
    priv = :code.priv_dir(:relaybox)

    case precompiled(priv) do
      nil ->
        :erlang.load_nif(:filename.join(priv, ~c"librelaybox_nif"), 0)

      {path, expected} ->
        actual = "sha256:" <> Base.encode16(:crypto.hash(:sha256, File.read!(path)), case: :lower)

        if actual == expected do
          :erlang.load_nif(String.to_charlist(Path.rootname(path)), 0)
        else
          {:error,
           {:checksum_mismatch,
            ~c"#{path} does not match its checksum (expected #{expected}, found #{actual})"}}
        end
    end
  end

  # The precompiled NIF for this platform with the highest NIF version this
  # runtime loads, and its expected checksum; nil when there is none.
  defp precompiled(priv) do
    prefix = "librelaybox_nif-v#{@version}-nif-"
    suffix = "-#{target()}.so"
    runtime = nif_version(:erlang.system_info(:nif_version))

    @checksums
    |> Enum.flat_map(fn {name, checksum} ->
      path = Path.join([to_string(priv), "native", name])

      with true <- String.starts_with?(name, prefix) and String.ends_with?(name, suffix),
           version =
             nif_version(
               name
               |> String.replace_prefix(prefix, "")
               |> String.replace_suffix(suffix, "")
             ),
           true <- version != nil and Version.compare(version, runtime) != :gt,
           true <- File.exists?(path) do
        [{version, {path, checksum}}]
      else
        _ -> []
      end
    end)
    |> Enum.max_by(&elem(&1, 0), Version, fn -> {nil, nil} end)
    |> elem(1)
  end

  defp nif_version(text) do
    with [major, minor] <- text |> to_string() |> String.split("."),
         {:ok, version} <- Version.parse("#{major}.#{minor}.0") do
      version
    else
      _ -> nil
    end
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

  @doc """
  Runs an asynchronous NIF: `fun` receives a fresh reference and starts the
  work; the result sent back with that reference is returned.
  """
  @spec call((reference() -> :ok | {:error, Relaybox.Error.t()})) ::
          {:ok, term()} | {:error, Relaybox.Error.t()}
  def call(fun) do
    ref = make_ref()

    case fun.(ref) do
      :ok ->
        receive do
          {^ref, result} -> result
        end

      {:error, _} = error ->
        error
    end
  end

  @doc """
  Unwraps `{:ok, value}` or raises: the `Relaybox.Error` itself, or, for
  the `{:error, reason}` of a rolled-back transaction, a `Relaybox.Error`
  with code `:rollback`.
  """
  @spec unwrap!({:ok, value} | {:error, Exception.t()}) :: value when value: term()
  def unwrap!({:ok, value}), do: value
  def unwrap!({:error, %{__exception__: true} = error}), do: raise(error)

  def unwrap!({:error, reason}),
    do: raise(Relaybox.Error.new(:rollback, "transaction rolled back: #{inspect(reason)}"))

  defp nif, do: :erlang.nif_error(:nif_not_loaded)

  @doc false
  def version, do: nif()
  @doc false
  def schema_sql(_dialect, _prefix, _partitions), do: nif()
  @doc false
  def build_message(_spec), do: nif()
  @doc false
  def json_encode(_term), do: nif()
  @doc false
  def json_decode(_text), do: nif()
  # A test hook: the NIF implements it in the test environment only (cargo
  # feature `test-hooks`, see mix.exs); elsewhere this stub stays.
  @doc false
  def panic_for_tests(_mode, _ref), do: nif()

  @doc false
  def log_forward_start(_level), do: nif()
  @doc false
  def log_forward_set_level(_level), do: nif()
  @doc false
  def log_forward_stop, do: nif()
  @doc false
  def log_forward_ack, do: nif()
  @doc false
  def log_forward_stats, do: nif()
  # A test hook, as `panic_for_tests/2`.
  @doc false
  def log_for_tests(_level, _message, _count), do: nif()

  @doc false
  def outbox_open(_url, _options, _migrate, _ref), do: nif()
  @doc false
  def outbox_migrate(_outbox, _ref), do: nif()
  @doc false
  def outbox_close(_outbox, _ref), do: nif()
  @doc false
  def outbox_begin(_outbox, _ref), do: nif()
  @doc false
  def outbox_insert_sql(_outbox, _spec, _placeholders, _ref), do: nif()
  @doc false
  def outbox_insert_batch_sql(_outbox, _specs, _placeholders, _ref), do: nif()
  @doc false
  def outbox_info(_outbox), do: nif()
  @doc false
  def outbox_wake_relays(_outbox), do: nif()
  @doc false
  def outbox_pending_count(_outbox, _ref), do: nif()
  @doc false
  def outbox_status(_outbox, _ref), do: nif()
  @doc false
  def outbox_dead_letters(_outbox, _limit, _ref), do: nif()
  @doc false
  def outbox_retry_dead_letters(_outbox, _ids, _ref), do: nif()
  @doc false
  def outbox_purge_dead_letters(_outbox, _ids, _ref), do: nif()

  @doc false
  def tx_query(_tx, _sql, _params, _ref), do: nif()
  @doc false
  def tx_execute(_tx, _sql, _params, _ref), do: nif()
  @doc false
  def tx_enqueue(_tx, _spec, _ref), do: nif()
  @doc false
  def tx_enqueue_batch(_tx, _specs, _ref), do: nif()
  @doc false
  def tx_commit(_tx, _ref), do: nif()
  @doc false
  def tx_rollback(_tx, _ref), do: nif()

  @doc false
  def relay_start(_outbox, _transport, _config), do: nif()
  @doc false
  def relay_stop(_relay, _ref), do: nif()
  @doc false
  def relay_stats(_relay), do: nif()

  @doc false
  def consumer_start(_outbox, _transport, _topic, _config, _member, _size, _host), do: nif()
  @doc false
  def consumer_reply(_consumer, _call_id, _status, _reason), do: nif()
  @doc false
  def consumer_tx(_consumer, _call_id), do: nif()
  @doc false
  def consumer_stop(_consumer, _ref), do: nif()
  @doc false
  def consumer_stats(_consumer), do: nif()
end
