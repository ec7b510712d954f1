defmodule Relaybox.Outbox do
  @moduledoc """
  An open outbox store (PostgreSQL or SQLite) and the transactions that write
  business rows and events together.

      {:ok, outbox} = Relaybox.Outbox.open("postgres://app@localhost/app", migrate: true)

      {:ok, order_id} =
        Relaybox.Outbox.transaction(outbox, fn tx ->
          [%{"id" => id}] =
            Relaybox.Tx.query!(tx, "INSERT INTO orders (total) VALUES ($1) RETURNING id", [42])

          Relaybox.Tx.enqueue!(tx, %{topic: "orders", key: "order-\#{id}", type: "OrderPlaced",
                                     payload: %{id: id, total: 42}})
          id
        end)

  Give `name: MyApp.Outbox` to register the handle under a name that every
  function here (and `Relaybox.Relay`, `Relaybox.Consumer`, `@datastore` of
  `Relaybox.Producer`) accepts in place of the handle; or start it supervised
  as `{Relaybox.Outbox, url: url, name: MyApp.Outbox, migrate: true}`.

  Options of `open/2`: `:migrate` (apply the schema first, default false),
  `:name`, and the store options `:table_prefix` (default `"relaybox_"`),
  `:partitions` (default 16), `:max_payload_bytes`, `:max_connections`,
  `:min_connections` (default 0), `:connect_timeout` (ms). Unknown options are an `:invalid_config` error.

  The pool closes when the handle is garbage collected, or with `close/1`.

  ## Ecto

  Ecto users write events in `Repo.transaction/1` or an `Ecto.Multi` with
  `Relaybox.Ecto`; the outbox handle is then the one the relays and
  consumers use. `insert_sql/3` gives the INSERT for other drivers.
  """

  use GenServer

  alias Relaybox.{Error, Native, Spec, Tx}

  @enforce_keys [:ref]
  defstruct [:ref, :url]

  @type t :: %__MODULE__{ref: reference(), url: String.t()}
  @typedoc "A handle, or the name it was registered under."
  @type outbox :: t() | atom()

  @own_options [:migrate, :name]

  @doc "Connects; `{:ok, outbox}`. See the module documentation for options."
  @spec open(String.t(), keyword()) :: {:ok, t()} | {:error, Error.t()}
  def open(url, opts \\ []) when is_binary(url) and is_list(opts) do
    {own, store_opts} = Keyword.split(opts, @own_options)

    reply = make_ref()

    with {:ok, ref} <-
           Native.outbox_open(url, Spec.normalize(Map.new(store_opts)), !!own[:migrate], reply),
         {:ok, :ok} <- await(reply) do
      {:ok, info} = Native.outbox_info(ref)
      outbox = %__MODULE__{ref: ref, url: info.url}
      if name = own[:name], do: :persistent_term.put({__MODULE__, name}, outbox)
      {:ok, outbox}
    end
  end

  @doc "Like `open/2`, raising `Relaybox.Error`."
  @spec open!(String.t(), keyword()) :: t()
  def open!(url, opts \\ []), do: url |> open(opts) |> Native.unwrap!()

  @doc "The handle registered under `name`, or the handle itself."
  @spec resolve(outbox()) :: {:ok, t()} | {:error, Error.t()}
  def resolve(%__MODULE__{} = outbox), do: {:ok, outbox}

  def resolve(name) when is_atom(name) do
    case :persistent_term.get({__MODULE__, name}, nil) do
      nil -> {:error, Error.new(:not_found, "no outbox is registered as #{inspect(name)}")}
      outbox -> {:ok, outbox}
    end
  end

  def resolve(other),
    do: {:error, Error.new(:invalid_value, "not an outbox: #{inspect(other)}")}

  defp with_ref(outbox, fun) do
    with {:ok, %__MODULE__{ref: ref}} <- resolve(outbox), do: fun.(ref)
  end

  @doc "Applies pending migrations (idempotent)."
  @spec migrate(outbox()) :: :ok | {:error, Error.t()}
  def migrate(outbox) do
    with {:ok, :ok} <-
           with_ref(outbox, fn ref -> Native.call(&Native.outbox_migrate(ref, &1)) end),
         do: :ok
  end

  @doc "Closes the pool; later calls fail with code `:closed`."
  @spec close(outbox()) :: :ok | {:error, Error.t()}
  def close(outbox) do
    with {:ok, :ok} <- with_ref(outbox, fn ref -> Native.call(&Native.outbox_close(ref, &1)) end),
         do: :ok
  end

  @doc """
  Runs `fun.(tx)` in a transaction. Returns `{:ok, result}` after committing;
  rolls back and returns `{:error, reason}` when `fun` returns
  `{:error, reason}` or calls `Relaybox.Tx.rollback(tx, reason)`; rolls back
  and re-raises when `fun` raises. A failed commit is `{:error, %Relaybox.Error{}}`.
  """
  @spec transaction(outbox(), (Tx.t() -> result)) ::
          {:ok, result} | {:error, term()}
        when result: term()
  def transaction(outbox, fun) when is_function(fun, 1) do
    with {:ok, ref} <- with_ref(outbox, &begin/1) do
      tx = %Tx{ref: ref}

      try do
        fun.(tx)
      catch
        :throw, {:relaybox_rollback, ^ref, reason} ->
          Tx.rollback_now(tx)
          {:error, reason}

        kind, reason ->
          Tx.rollback_now(tx)
          :erlang.raise(kind, reason, __STACKTRACE__)
      else
        {:error, reason} ->
          Tx.rollback_now(tx)
          {:error, reason}

        result ->
          with {:ok, :ok} <- Tx.commit(tx), do: {:ok, result}
      end
    end
  end

  defp begin(outbox_ref) do
    reply = make_ref()

    case Native.outbox_begin(outbox_ref, reply) do
      {:ok, tx} ->
        with {:ok, :ok} <- await(reply), do: {:ok, tx}

      {:error, _} = error ->
        error
    end
  end

  defp await(reply) do
    receive do
      {^reply, result} -> result
    end
  end

  @doc "Like `transaction/2`, returning the result or raising."
  @spec transaction!(outbox(), (Tx.t() -> result)) :: result when result: term()
  def transaction!(outbox, fun), do: outbox |> transaction(fun) |> Native.unwrap!()

  @doc "Enqueues one message in a transaction of its own; `{:ok, message_id}`."
  @spec enqueue(outbox(), map() | keyword()) :: {:ok, String.t()} | {:error, Error.t()}
  def enqueue(outbox, spec) do
    case transaction(outbox, &Tx.enqueue(&1, spec)) do
      {:ok, {:ok, id}} -> {:ok, id}
      {:error, _} = error -> error
    end
  end

  @doc """
  The SQL and parameters that insert `spec` into the outbox, for a driver of
  your own (Ecto's `Repo.query!/2` inside `Repo.transaction/1`):
  `{:ok, {sql, params}}`. The message is validated first; nothing is written.

  On PostgreSQL the placeholders are `$1..$10` and the parameters are text
  (the id, the JSON headers, RFC 3339 timestamps), an integer (the
  partition) and a binary (the payload): the statement casts them itself, so
  Postgrex binds them as they are. On SQLite the timestamps are integer
  microseconds. Option: `placeholders: :question` (or `:percent`,
  `:pyformat`, `:named`) for other drivers.
  """
  @spec insert_sql(outbox(), map() | keyword(), keyword()) ::
          {:ok, {String.t(), list()}} | {:error, Error.t()}
  def insert_sql(outbox, spec, opts \\ []) do
    style = opts |> Keyword.get(:placeholders, :dollar) |> to_string()
    spec = Spec.message(spec)

    with {:ok, {sql, params, _id}} <-
           with_ref(outbox, fn ref ->
             Native.call(&Native.outbox_insert_sql(ref, spec, style, &1))
           end),
         do: {:ok, {sql, params}}
  end

  @doc "Like `insert_sql/3`, raising `Relaybox.Error`."
  @spec insert_sql!(outbox(), map() | keyword(), keyword()) :: {String.t(), list()}
  def insert_sql!(outbox, spec, opts \\ []),
    do: outbox |> insert_sql(spec, opts) |> Native.unwrap!()

  @doc """
  A statement (`NOTIFY <prefix>outbox` on PostgreSQL, `nil` on SQLite) to run
  in your own transaction after `insert_sql/3`, so relays of every process
  wake when it commits instead of at their next poll.
  """
  @spec wake_statement(outbox()) :: String.t() | nil
  def wake_statement(outbox), do: info!(outbox).wake_statement

  @doc "`{:ok, info}`: redacted `url`, `dialect`, `table_prefix`, `wake_statement`, `closed`."
  @spec info(outbox()) :: {:ok, map()} | {:error, Error.t()}
  def info(outbox), do: with_ref(outbox, &Native.outbox_info/1)

  defp info!(outbox), do: outbox |> info() |> Native.unwrap!()

  @doc "Wakes this node's relays on this outbox (after your own driver committed outbox rows)."
  @spec wake_relays(outbox()) :: :ok | {:error, Error.t()}
  def wake_relays(outbox), do: with_ref(outbox, &Native.outbox_wake_relays/1)

  @doc "Number of undelivered outbox rows."
  @spec pending_count(outbox()) :: {:ok, non_neg_integer()} | {:error, Error.t()}
  def pending_count(outbox),
    do: with_ref(outbox, fn ref -> Native.call(&Native.outbox_pending_count(ref, &1)) end)

  @doc "Backlog per topic, dead letters and lease owners (string keys)."
  @spec status(outbox()) :: {:ok, map()} | {:error, Error.t()}
  def status(outbox),
    do: with_ref(outbox, fn ref -> Native.call(&Native.outbox_status(ref, &1)) end)

  @doc """
  Up to `limit` dead letters, oldest failure first; each a map with
  `"message"` (as a handler sees it), `"origin"`, `"attempts"`, `"last_error"`
  and `"failed_at"`.
  """
  @spec dead_letters(outbox(), pos_integer()) :: {:ok, [map()]} | {:error, Error.t()}
  def dead_letters(outbox, limit \\ 100),
    do: with_ref(outbox, fn ref -> Native.call(&Native.outbox_dead_letters(ref, limit, &1)) end)

  @doc "Moves dead letters (all, or those with the given ids) back into the outbox."
  @spec retry_dead_letters(outbox(), [String.t()] | nil) ::
          {:ok, non_neg_integer()} | {:error, Error.t()}
  def retry_dead_letters(outbox, ids \\ nil),
    do:
      with_ref(outbox, fn ref -> Native.call(&Native.outbox_retry_dead_letters(ref, ids, &1)) end)

  @doc "Deletes dead letters (all, or those with the given ids)."
  @spec purge_dead_letters(outbox(), [String.t()] | nil) ::
          {:ok, non_neg_integer()} | {:error, Error.t()}
  def purge_dead_letters(outbox, ids \\ nil),
    do:
      with_ref(outbox, fn ref -> Native.call(&Native.outbox_purge_dead_letters(ref, ids, &1)) end)

  @doc """
  Starts a process that opens the outbox, registers it under `:name` and
  closes it when stopped. Options: `:url` plus those of `open/2`.
  """
  @spec start_link(keyword()) :: GenServer.on_start()
  def start_link(opts) do
    name = Keyword.fetch!(opts, :name)
    GenServer.start_link(__MODULE__, opts, name: Module.concat(name, Owner))
  end

  @doc "A child specification: `{Relaybox.Outbox, url: url, name: MyApp.Outbox}`."
  def child_spec(opts) do
    %{id: {__MODULE__, Keyword.get(opts, :name)}, start: {__MODULE__, :start_link, [opts]}}
  end

  @impl GenServer
  def init(opts) do
    Process.flag(:trap_exit, true)
    {url, opts} = Keyword.pop!(opts, :url)

    case open(url, opts) do
      {:ok, outbox} -> {:ok, {Keyword.fetch!(opts, :name), outbox}}
      {:error, error} -> {:stop, error}
    end
  end

  @impl GenServer
  def terminate(_reason, {name, outbox}) do
    :persistent_term.erase({__MODULE__, name})
    close(outbox)
  end
end

defimpl Inspect, for: Relaybox.Outbox do
  def inspect(%{url: url}, _opts), do: "#Relaybox.Outbox<#{url}>"
end
