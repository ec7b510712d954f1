defmodule Mix.Tasks.Relaybox.Gen.Migration do
  @shortdoc "Generates an Ecto migration that creates the relaybox tables"
  @moduledoc """
  Writes `priv/repo/migrations/<timestamp>_add_relaybox_tables.exs` (or into
  `--migrations-path`), an Ecto migration that applies `Relaybox.Migration`
  one statement per `execute/1` (Postgrex runs one statement per query).

      mix relaybox.gen.migration [--repo MyApp.Repo] [--migrations-path DIR] [--prefix relaybox_]

  Then run `mix ecto.migrate`; `mix ecto.rollback` drops the tables again.
  """
  use Mix.Task

  @impl Mix.Task
  def run(args) do
    {opts, _, _} =
      OptionParser.parse(args, strict: [repo: :string, migrations_path: :string, prefix: :string])

    repo = opts[:repo] || default_repo()
    dir = opts[:migrations_path] || Path.join(["priv", "repo", "migrations"])
    prefix = opts[:prefix] || "relaybox_"
    File.mkdir_p!(dir)
    path = Path.join(dir, "#{timestamp()}_add_relaybox_tables.exs")

    prefix_opt = if prefix == "relaybox_", do: "", else: ", prefix: #{inspect(prefix)}"

    File.write!(path, """
    defmodule #{repo}.Migrations.AddRelayboxTables do
      use Ecto.Migration

      def up do
        Enum.each(Relaybox.Migration.up_statements(version: 1#{prefix_opt}), &execute/1)
      end

      def down do
        Enum.each(Relaybox.Migration.down_statements(version: 1#{prefix_opt}), &execute/1)
      end
    end
    """)

    Mix.shell().info("* creating #{path}")
    path
  end

  defp default_repo do
    app = Mix.Project.config()[:app] |> to_string() |> Macro.camelize()
    "#{app}.Repo"
  end

  defp timestamp do
    {{y, m, d}, {hh, mm, ss}} = :calendar.universal_time()
    :io_lib.format("~4..0B~2..0B~2..0B~2..0B~2..0B~2..0B", [y, m, d, hh, mm, ss]) |> to_string()
  end
end
