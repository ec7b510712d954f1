defmodule Relaybox.Tx do
  @moduledoc """
  An open database transaction: business writes with `query/3` and events
  with `enqueue/2` commit or roll back together.

  You get one from `Relaybox.Outbox.transaction/2` (committed when your
  function returns) or, in a consumer, as `message["tx"]` (committed by the
  consumer together with the inbox row that marks the message processed).

  Parameters are `$1, $2, ...` placeholders bound to `nil`, booleans,
  integers, floats, strings (text), non-UTF-8 binaries (bytes), maps and
  lists (JSONB), `DateTime`s (timestamptz) and the tagged forms
  `{:bytes, bin}`, `{:json, term}`, `{:uuid, text}` and `{:timestamp, iso}`.
  Rows come back as maps from column name (a string) to value.
  """

  @enforce_keys [:ref]
  defstruct [:ref]

  @type t :: %__MODULE__{ref: reference()}

  alias Relaybox.Native

  @doc "Runs a query; `{:ok, rows}` with each row a map from column name to value."
  @spec query(t(), String.t(), list()) :: {:ok, [map()]} | {:error, Relaybox.Error.t()}
  def query(%__MODULE__{ref: tx}, sql, params \\ []) when is_binary(sql) and is_list(params) do
    Native.call(&Native.tx_query(tx, sql, Relaybox.Spec.params(params), &1))
  end

  @doc "Like `query/3`, raising `Relaybox.Error`."
  @spec query!(t(), String.t(), list()) :: [map()]
  def query!(tx, sql, params \\ []), do: tx |> query(sql, params) |> Native.unwrap!()

  @doc "Runs a statement; `{:ok, rows_affected}`."
  @spec execute(t(), String.t(), list()) ::
          {:ok, non_neg_integer()} | {:error, Relaybox.Error.t()}
  def execute(%__MODULE__{ref: tx}, sql, params \\ []) when is_binary(sql) and is_list(params) do
    Native.call(&Native.tx_execute(tx, sql, Relaybox.Spec.params(params), &1))
  end

  @doc "Like `execute/3`, raising `Relaybox.Error`."
  @spec execute!(t(), String.t(), list()) :: non_neg_integer()
  def execute!(tx, sql, params \\ []), do: tx |> execute(sql, params) |> Native.unwrap!()

  @doc """
  Writes a message (see `Relaybox.Spec`) to the outbox in this transaction;
  `{:ok, message_id}`. An invalid message writes nothing and the transaction
  stays usable.
  """
  @spec enqueue(t(), map() | keyword() | String.t()) ::
          {:ok, String.t()} | {:error, Relaybox.Error.t()}
  def enqueue(%__MODULE__{ref: tx}, spec) do
    Relaybox.Telemetry.enqueue([spec], nil, fn ->
      Native.call(&Native.tx_enqueue(tx, Relaybox.Spec.message(spec), &1))
    end)
  end

  @doc "Like `enqueue/2`, raising `Relaybox.Error`."
  @spec enqueue!(t(), map() | keyword() | String.t()) :: String.t()
  def enqueue!(tx, spec), do: tx |> enqueue(spec) |> Native.unwrap!()

  @doc "Writes many messages in one statement, all or none; `{:ok, ids}`."
  @spec enqueue_batch(t(), [map() | keyword()]) ::
          {:ok, [String.t()]} | {:error, Relaybox.Error.t()}
  def enqueue_batch(%__MODULE__{ref: tx}, specs) when is_list(specs) do
    Relaybox.Telemetry.enqueue(specs, nil, fn ->
      specs = Enum.map(specs, &Relaybox.Spec.message/1)
      Native.call(&Native.tx_enqueue_batch(tx, specs, &1))
    end)
  end

  @doc "Like `enqueue_batch/2`, raising `Relaybox.Error`."
  @spec enqueue_batch!(t(), [map() | keyword()]) :: [String.t()]
  def enqueue_batch!(tx, specs), do: tx |> enqueue_batch(specs) |> Native.unwrap!()

  @doc """
  Aborts the surrounding `Relaybox.Outbox.transaction/2`, which rolls back
  and returns `{:error, reason}`.
  """
  @spec rollback(t(), term()) :: no_return()
  def rollback(%__MODULE__{ref: ref}, reason), do: throw({:relaybox_rollback, ref, reason})

  @doc false
  def commit(%__MODULE__{ref: tx}), do: Native.call(&Native.tx_commit(tx, &1))

  @doc false
  def rollback_now(%__MODULE__{ref: tx}), do: Native.call(&Native.tx_rollback(tx, &1))
end

defimpl Inspect, for: Relaybox.Tx do
  def inspect(_tx, _opts), do: "#Relaybox.Tx<>"
end
