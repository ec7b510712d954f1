defmodule Relaybox.Migration do
  @moduledoc """
  The relaybox schema as SQL, for applying it with your own migration tool
  (EventodbKit's `EventodbKit.Migration`).

      defmodule MyApp.Repo.Migrations.AddRelayboxTables do
        use Ecto.Migration

        def up do
          Enum.each(Relaybox.Migration.up_statements(version: 1), &execute/1)
        end

        def down do
          Enum.each(Relaybox.Migration.down_statements(version: 1), &execute/1)
        end
      end

  `mix relaybox.gen.migration` writes that file; `mix ecto.migrate` applies
  it and `mix ecto.rollback` reverts it. Postgrex runs one statement per
  query, so an Ecto migration executes the statements one by one.

  Called inside an Ecto migration, as EventodbKit's users write it, `up/1`
  and `down/1` do the same themselves:

      def up, do: Relaybox.Migration.up(version: 1)
      def down, do: Relaybox.Migration.down(version: 1)

  Anywhere else they return the SQL as one script, for tools that run
  scripts.

  Schema versions: 1 (the outbox, inbox, dead letters, positions, leases and
  the database transport's log), 2 (producers' idempotency keys), 3 (the
  leases of relays that serve some topics only) and 4 (keys parked behind a
  dead letter: the dead letters' outbox positions and their index). `up/1`
  with any version creates every table this relaybox knows (the SQL is
  idempotent), so a database that a `version: 1` migration created gains the
  later tables from a later migration calling `up(version: 4)`;
  `down(version: 2)`, `down(version: 3)` or `down(version: 4)` drops only
  that version's tables, columns and indexes, `down(version: 1)` every table.

  Options: `:version` (1 to 4), `:prefix` (default `"relaybox_"`),
  `:partitions` (default 16) and `:dialect` (`:postgres`, the default, or
  `:sqlite`). The SQL is idempotent and records itself in
  `<prefix>schema_migrations`, so `Relaybox.Outbox.migrate/1` later knows it ran.
  Alternatively, skip this and call `Relaybox.Outbox.open(url, migrate: true)`.
  """

  @tables ~w(dead_letter_seqs relay_routes route_leases idempotency_keys log relay_instances leases positions inbox dead_letters outbox schema_migrations)

  @doc """
  The SQL that creates the schema up to `version`, as one script; inside an
  Ecto migration, executes it statement by statement instead and returns `:ok`.
  """
  @spec up(keyword()) :: String.t() | :ok
  def up(opts \\ []), do: opts |> up_script() |> run_or_return()

  @doc """
  The SQL that drops the tables of `version`, as one script; inside an Ecto
  migration, executes it statement by statement instead and returns `:ok`.
  """
  @spec down(keyword()) :: String.t() | :ok
  def down(opts \\ []), do: opts |> down_script() |> run_or_return()

  # Ecto's migration runner marks the process that runs a migration's
  # `up`/`down`; `Ecto.Migration.execute/1` queues a command there. Called
  # through `apply/3` so this module compiles without Ecto.
  defp run_or_return(script) do
    if in_ecto_migration?() do
      Enum.each(split(script), &apply(Ecto.Migration, :execute, [&1]))
    else
      script
    end
  end

  defp in_ecto_migration?,
    do: Code.ensure_loaded?(Ecto.Migration) and is_map(Process.get(:ecto_migration))

  defp up_script(opts) do
    check_version!(opts)
    dialect = opts |> Keyword.get(:dialect, :postgres) |> to_string()
    prefix = Keyword.get(opts, :prefix, "relaybox_")
    partitions = Keyword.get(opts, :partitions, 16)

    case Relaybox.Native.schema_sql(dialect, prefix, partitions) do
      {:ok, sql} -> sql
      {:error, error} -> raise error
    end
  end

  @doc """
  The statements of `up/1`, one a string, in order (comments left out), for
  `execute/1` of an Ecto migration.
  """
  @spec up_statements(keyword()) :: [String.t()]
  def up_statements(opts \\ []), do: opts |> up_script() |> split()

  @doc "The statements of `down/1`, one a string, in order."
  @spec down_statements(keyword()) :: [String.t()]
  def down_statements(opts \\ []), do: opts |> down_script() |> split()

  # The core's schema has no `;` inside literals or bodies.
  defp split(sql) do
    sql
    |> String.split("\n")
    |> Enum.reject(&String.starts_with?(String.trim_leading(&1), "--"))
    |> Enum.join("\n")
    |> String.split(";")
    |> Enum.map(&String.trim/1)
    |> Enum.reject(&(&1 == ""))
  end

  defp down_script(opts) do
    check_version!(opts)
    prefix = Keyword.get(opts, :prefix, "relaybox_")

    unless Regex.match?(~r/\A[a-z_][a-z0-9_]{0,29}\z|\A\z/, prefix) do
      raise ArgumentError, "invalid table prefix #{inspect(prefix)}"
    end

    case Keyword.get(opts, :version, 1) do
      2 ->
        "DROP TABLE IF EXISTS #{prefix}idempotency_keys;\n" <>
          "DELETE FROM #{prefix}schema_migrations WHERE version = 2;\n"

      3 ->
        "DROP TABLE IF EXISTS #{prefix}relay_routes;\n" <>
          "DROP TABLE IF EXISTS #{prefix}route_leases;\n" <>
          "DELETE FROM #{prefix}schema_migrations WHERE version = 3;\n"

      4 ->
        positions =
          case Keyword.get(opts, :dialect, :postgres) do
            :sqlite -> "DROP TABLE IF EXISTS #{prefix}dead_letter_seqs;\n"
            _ -> "ALTER TABLE #{prefix}dead_letters DROP COLUMN IF EXISTS seq;\n"
          end

        "DROP INDEX IF EXISTS #{prefix}dead_letters_parked;\n" <>
          positions <>
          "DELETE FROM #{prefix}schema_migrations WHERE version = 4;\n"

      _ ->
        Enum.map_join(@tables, "", &"DROP TABLE IF EXISTS #{prefix}#{&1};\n")
    end
  end

  defp check_version!(opts) do
    case Keyword.get(opts, :version, 1) do
      v when v in [1, 2, 3, 4] -> :ok
      v -> raise ArgumentError, "unknown relaybox schema version #{inspect(v)}; the latest is 4"
    end
  end
end
