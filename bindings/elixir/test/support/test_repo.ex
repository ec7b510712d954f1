defmodule Relaybox.TestRepo do
  @moduledoc """
  The test application's Ecto repo, on the PostgreSQL test database of
  `dev/services` (the outbox's database); started by `start!/0`.
  """
  use Ecto.Repo, otp_app: :relaybox, adapter: Ecto.Adapters.Postgres

  @doc "Starts the repo (once) with the URL of `RELAYBOX_TEST_DATABASE_URL`, also set as its config."
  def start!(url) do
    # As in an application's config: `config/0` gives the URL.
    Application.put_env(:relaybox, __MODULE__, url: url)

    case start_link(url: url, pool_size: 6, log: false) do
      {:ok, pid} ->
        Process.unlink(pid)
        :ok

      {:error, {:already_started, _}} ->
        :ok
    end
  end
end

defmodule Relaybox.OtherDatabaseRepo do
  @moduledoc "A repo on another database of the same server than the outbox."
  use Ecto.Repo, otp_app: :relaybox, adapter: Ecto.Adapters.Postgres
end

defmodule Relaybox.StoppedRepo do
  @moduledoc "A repo that no test starts."
  use Ecto.Repo, otp_app: :relaybox, adapter: Ecto.Adapters.Postgres
end

defmodule Relaybox.TestRepo.Order do
  @moduledoc "A business row of the test application."
  use Ecto.Schema

  schema "ecto_test_orders" do
    field(:ref, :string)
    field(:total, :integer)
    timestamps(type: :utc_datetime_usec)
  end
end

defmodule Relaybox.TestRepo.Migrations.CreateOrders do
  @moduledoc "The test application's migration: its business table."
  use Ecto.Migration

  def change do
    create table(:ecto_test_orders) do
      add(:ref, :text, null: false)
      add(:total, :integer, null: false)
      timestamps(type: :utc_datetime_usec)
    end

    create(index(:ecto_test_orders, [:ref]))
  end
end
