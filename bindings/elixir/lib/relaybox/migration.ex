defmodule Relaybox.Migration do
  @moduledoc """
  The relaybox schema as SQL, for applying it with your own migration tool
  (EventodbKit's `EventodbKit.Migration`).

      defmodule MyApp.Repo.Migrations.AddRelayboxTables do
        use Ecto.Migration

        def up, do: execute(Relaybox.Migration.up(version: 1))
        def down, do: execute(Relaybox.Migration.down(version: 1))
      end

  `mix relaybox.gen.migration` writes that file. Options: `:version` (1, the
  only schema version so far), `:prefix` (default `"relaybox_"`),
  `:partitions` (default 16) and `:dialect` (`:postgres`, the default, or
  `:sqlite`). The SQL is idempotent and records itself in
  `<prefix>schema_migrations`, so `Relaybox.Outbox.migrate/1` later knows it ran.
  Alternatively, skip this and call `Relaybox.Outbox.open(url, migrate: true)`.
  """

  @tables ~w(log relay_instances leases positions inbox dead_letters outbox schema_migrations)

  @doc "The SQL that creates the schema up to `version`."
  @spec up(keyword()) :: String.t()
  def up(opts \\ []) do
    check_version!(opts)
    dialect = opts |> Keyword.get(:dialect, :postgres) |> to_string()
    prefix = Keyword.get(opts, :prefix, "relaybox_")
    partitions = Keyword.get(opts, :partitions, 16)

    case Relaybox.Native.schema_sql(dialect, prefix, partitions) do
      {:ok, sql} -> sql
      {:error, error} -> raise error
    end
  end

  @doc "The SQL that drops the tables of `version`."
  @spec down(keyword()) :: String.t()
  def down(opts \\ []) do
    check_version!(opts)
    prefix = Keyword.get(opts, :prefix, "relaybox_")

    unless Regex.match?(~r/\A[a-z_][a-z0-9_]{0,29}\z|\A\z/, prefix) do
      raise ArgumentError, "invalid table prefix #{inspect(prefix)}"
    end

    Enum.map_join(@tables, "", &"DROP TABLE IF EXISTS #{prefix}#{&1};\n")
  end

  defp check_version!(opts) do
    case Keyword.get(opts, :version, 1) do
      1 -> :ok
      v -> raise ArgumentError, "unknown relaybox schema version #{inspect(v)}; the latest is 1"
    end
  end
end
