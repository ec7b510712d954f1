defmodule Relaybox.Native do
  @moduledoc """
  The NIF (`relaybox_nif`, a rustler crate built by the `:cargo` compiler in
  `mix.exs`) and the helpers that turn its replies into plain results.

  This module is internal: use `Relaybox.Outbox`, `Relaybox.Tx`,
  `Relaybox.Relay` and `Relaybox.Consumer`. Calls that touch the database or a
  broker return `:ok` at once and the core sends `{ref, result}` to the caller
  when done; `call/1` waits for that reply in the calling process.
  """

  @on_load :load_nif

  @doc false
  def load_nif do
    path = :filename.join(:code.priv_dir(:relaybox), ~c"librelaybox_nif")
    :erlang.load_nif(path, 0)
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
