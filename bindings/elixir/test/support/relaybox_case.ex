defmodule Relaybox.Case do
  @moduledoc """
  Shared setup of the ExUnit suites: the real PostgreSQL and Kafka of
  `dev/services` (a test fails, never skips, when one is missing), a fresh
  table prefix per test whose tables are dropped afterwards, and a polling
  helper.
  """
  use ExUnit.CaseTemplate

  @hint ~S[start them with `dev/services start && eval "$(dev/services env)"`]

  using do
    quote do
      import Relaybox.Case
      alias Relaybox.{Outbox, Tx}
    end
  end

  setup do
    prefix = "ex_#{unique()}_"
    outbox = Relaybox.Outbox.open!(db_url!(), migrate: true, table_prefix: prefix)

    on_exit(fn -> drop_tables(prefix) end)

    %{outbox: outbox, prefix: prefix}
  end

  @doc "The PostgreSQL test database URL."
  def db_url! do
    case System.get_env("RELAYBOX_TEST_DATABASE_URL", "") do
      "" ->
        flunk("RELAYBOX_TEST_DATABASE_URL is not set: the tests use the real services; #{@hint}")

      url ->
        url
    end
  end

  @doc "Bootstrap servers of the real Kafka broker; fails when none answers."
  def kafka! do
    servers =
      case System.get_env("RELAYBOX_KAFKA_BOOTSTRAP", "") do
        "" -> flunk("RELAYBOX_KAFKA_BOOTSTRAP is not set; #{@hint}")
        s -> s
      end

    [host, port] = servers |> String.split(",") |> hd() |> String.split(":")

    case :gen_tcp.connect(String.to_charlist(host), String.to_integer(port), [], 5_000) do
      {:ok, socket} ->
        :gen_tcp.close(socket)

      {:error, reason} ->
        flunk("no Kafka broker answers at #{servers} (#{inspect(reason)}); #{@hint}")
    end

    servers
  end

  @doc "The value of a required environment variable; fails the test when unset."
  def env!(name) do
    case System.get_env(name, "") do
      "" -> flunk("#{name} is not set: the tests use the real services; #{@hint}")
      value -> value
    end
  end

  @doc "A short random lowercase id."
  def unique, do: :crypto.strong_rand_bytes(5) |> Base.encode16(case: :lower)

  @doc "Runs `sql` in a transaction of its own and returns the rows."
  def sql!(outbox, sql, params \\ []) do
    Relaybox.Outbox.transaction!(outbox, &Relaybox.Tx.query!(&1, sql, params))
  end

  @doc "The number of rows of `table`."
  def count!(outbox, table) do
    [%{"n" => n}] = sql!(outbox, "SELECT count(*) AS n FROM #{table}")
    n
  end

  @doc "Polls `fun` until it returns a truthy value, failing after `timeout` ms."
  def eventually(what, fun, timeout \\ 30_000) do
    deadline = System.monotonic_time(:millisecond) + timeout
    poll(what, fun, deadline)
  end

  defp poll(what, fun, deadline) do
    if value = fun.() do
      value
    else
      if System.monotonic_time(:millisecond) > deadline,
        do: flunk("timed out waiting for #{what}")

      Process.sleep(50)
      poll(what, fun, deadline)
    end
  end

  defp drop_tables(prefix) do
    outbox = Relaybox.Outbox.open!(db_url!(), max_connections: 1)

    tables =
      sql!(
        outbox,
        "SELECT tablename FROM pg_tables WHERE schemaname = current_schema() AND tablename LIKE $1",
        [prefix <> "%"]
      )

    for %{"tablename" => t} <- tables, do: sql!(outbox, ~s(DROP TABLE IF EXISTS "#{t}" CASCADE))
    Relaybox.Outbox.close(outbox)
  end
end
