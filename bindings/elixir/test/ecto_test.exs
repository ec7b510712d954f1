defmodule Relaybox.EctoTest do
  # One module for every Ecto test: they share the test application's table
  # and its migrations, run by Ecto.Migrator on the real PostgreSQL.
  use Relaybox.Case, async: true

  import Ecto.Query

  alias Ecto.Multi
  alias Relaybox.TestRepo, as: Repo
  alias Relaybox.TestRepo.Order

  @moduletag :tmp_dir

  @orders_version 20_260_101_000_001

  defmodule Handler do
    @moduledoc "Writes an order through the repo for each message, then fails when told to."
    use Relaybox.Consumer

    @impl Relaybox.Consumer
    def init(opts), do: {:ok, Map.new(opts)}

    @impl Relaybox.Consumer
    def handle_message(message, state) do
      Repo.insert!(%Order{ref: state.ref, total: message["data"]["n"]})
      if state[:kill_after_commit], do: Process.put(:relaybox_test_kill_after_commit, true)
      member = Map.get(state, :group_member, 0)
      send(state.test, {:handled, message["id"], Map.has_key?(message, "tx"), member})

      case state[:fail] do
        nil -> :ok
        :raise -> raise ArgumentError, "handler exploded"
        :error -> {:error, :not_today}
      end
    end
  end

  defmodule Serializers.Order do
    @moduledoc "The serializer of orders for the producer below."
    def message_versions, do: [1]
    def created(order, 1), do: %{id: order.id, total: order.total}
    def partition_key(order), do: order.id
    def message_route(event), do: "shop/order/#{event}"
  end

  defmodule Producer do
    @moduledoc "A WokAsyncMessageHandler producer whose datastore is the repo."
    @producer_name "shop"
    @realtime_topic "realtime"
    @datastore Relaybox.TestRepo
    @serializers Relaybox.EctoTest.Serializers
    use Relaybox.Producer
  end

  @doc """
  A handler of the repo's query events: kills the process that just
  committed when its handler asked for it, i.e. after the commit and before
  the consumer acknowledges.
  """
  def kill_after_commit(_event, _measurements, %{query: "commit"}, _config) do
    if Process.delete(:relaybox_test_kill_after_commit), do: Process.exit(self(), :kill)
  end

  def kill_after_commit(_event, _measurements, _metadata, _config), do: :ok

  setup_all do
    Repo.start!(db_url!())

    [{@orders_version, Relaybox.TestRepo.Migrations.CreateOrders}]
    |> then(&Ecto.Migrator.run(Repo, &1, :up, all: true, log: false))

    on_exit(fn ->
      Repo.start!(db_url!())
      migrations = [{@orders_version, Relaybox.TestRepo.Migrations.CreateOrders}]
      Ecto.Migrator.run(Repo, migrations, :down, all: true, log: false)
    end)

    :ok
  end

  defp orders(ref), do: Repo.all(from(o in Order, where: o.ref == ^ref, select: o.total))

  defp message(topic, n), do: %{topic: topic, key: "k#{n}", type: "Numbered", payload: %{n: n}}

  defp pending(outbox) do
    {:ok, n} = Outbox.pending_count(outbox)
    n
  end

  defp handler_opts(outbox, topic, ref, extra) do
    [
      outbox: outbox,
      repo: Repo,
      category: topic,
      consumer_id: "g-#{topic}",
      poll_interval: 100,
      ref: ref,
      test: self()
    ]
    |> Keyword.merge(extra)
  end

  test "an event enqueued in Repo.transaction rolls back with the rows, or commits and is delivered once",
       %{outbox: outbox, prefix: prefix} do
    topic = "orders-#{unique()}"
    ref = unique()

    # The relays' wake-up: a NOTIFY sent when the repo's transaction commits.
    notifications =
      start_supervised!({Postgrex.Notifications, Ecto.Repo.Supervisor.parse_url(db_url!())})

    {:ok, _} = Postgrex.Notifications.listen(notifications, "#{prefix}outbox")

    assert {:error, :changed_my_mind} =
             Repo.transaction(fn ->
               Repo.insert!(%Order{ref: ref, total: 1})
               {:ok, _id} = Relaybox.Ecto.enqueue(Repo, outbox, message(topic, 1))
               Repo.rollback(:changed_my_mind)
             end)

    assert orders(ref) == []
    assert pending(outbox) == 0
    refute_receive {:notification, _, _, _, _}, 200

    assert {:ok, id} =
             Repo.transaction(fn ->
               Repo.insert!(%Order{ref: ref, total: 2})
               Relaybox.Ecto.enqueue!(Repo, outbox, message(topic, 2))
             end)

    assert orders(ref) == [2]
    assert pending(outbox) == 1
    assert_receive {:notification, _, _, channel, _partitions}, 5_000
    assert channel == "#{prefix}outbox"

    handled = "handled-#{ref}"
    start_supervised!({Relaybox.Relay, outbox: outbox, poll_interval: 100})
    consumer = start_supervised!({Handler, handler_opts(outbox, topic, handled, [])})

    assert_receive {:handled, ^id, false, 0}, 15_000

    eventually("processed", fn ->
      match?({:ok, %{processed: 1}}, Relaybox.Consumer.stats(consumer))
    end)

    assert orders(handled) == [2]
    refute_receive {:handled, _, _, _}, 300
    assert pending(outbox) == 0
  end

  test "enqueue_batch writes every message in the transaction, in order", %{outbox: outbox} do
    topic = "batch-#{unique()}"

    {:ok, ids} =
      Repo.transaction(fn ->
        Relaybox.Ecto.enqueue_batch!(Repo, outbox, for(n <- 1..3, do: message(topic, n)))
      end)

    assert length(ids) == 3

    assert sql!(outbox, "SELECT id::text AS id FROM #{outbox_table(outbox)} ORDER BY seq") ==
             Enum.map(ids, &%{"id" => &1})

    assert {:ok, {:ok, []}} =
             Repo.transaction(fn -> Relaybox.Ecto.enqueue_batch(Repo, outbox, []) end)
  end

  test "an Ecto.Multi commits its event with its rows; a failing later step leaves neither",
       %{outbox: outbox} do
    topic = "multi-#{unique()}"
    ref = unique()

    order_then_event =
      Multi.new()
      |> Multi.insert(:order, %Order{ref: ref, total: 7})
      |> Relaybox.Ecto.enqueue(:event, outbox, fn %{order: order} ->
        %{topic: topic, key: "order-#{order.id}", payload: %{n: order.total}}
      end)

    failing = Multi.run(order_then_event, :charge, fn _repo, _changes -> {:error, :declined} end)

    assert {:error, :charge, :declined, %{event: _id}} = Repo.transaction(failing)
    assert orders(ref) == []
    assert pending(outbox) == 0

    assert {:ok, %{order: order, event: id}} = Repo.transaction(order_then_event)
    assert orders(ref) == [7]

    key = "order-#{order.id}"

    assert [%{"id" => ^id, "key" => ^key}] =
             sql!(outbox, "SELECT id::text AS id, key FROM #{outbox_table(outbox)}")

    batch =
      Multi.new()
      |> Relaybox.Ecto.enqueue_batch(:events, outbox, [message(topic, 1), message(topic, 2)])

    assert {:ok, %{events: [_, _]}} = Repo.transaction(batch)
    assert pending(outbox) == 3
  end

  test "bad input is a clear error and writes nothing", %{outbox: outbox, tmp_dir: dir} do
    topic = "bad-#{unique()}"
    ref = unique()

    # Outside a transaction.
    assert {:error, %Relaybox.Error{code: :invalid_config, message: outside}} =
             Relaybox.Ecto.enqueue(Repo, outbox, message(topic, 1))

    assert outside =~ "inside Relaybox.TestRepo.transaction/1"

    assert_raise Relaybox.Error, ~r/transaction/, fn ->
      Relaybox.Ecto.enqueue!(Repo, outbox, message(topic, 1))
    end

    # A repo that is not started, and something that is not a repo.
    assert {:error, %Relaybox.Error{code: :invalid_config, message: stopped}} =
             Relaybox.Ecto.enqueue(Relaybox.StoppedRepo, outbox, message(topic, 1))

    assert stopped =~ "Relaybox.StoppedRepo is not started"

    assert {:error, %Relaybox.Error{message: not_repo}} =
             Relaybox.Ecto.enqueue(String, outbox, message(topic, 1))

    assert not_repo =~ "String is not an Ecto repo"

    # A repo on another database of the same server.
    other_url = db_url!() |> URI.parse() |> Map.put(:path, "/postgres") |> URI.to_string()
    start_supervised!({Relaybox.OtherDatabaseRepo, url: other_url, pool_size: 1, log: false})

    assert {:ok, {:error, %Relaybox.Error{code: :invalid_config, message: other}}} =
             Relaybox.OtherDatabaseRepo.transaction(fn ->
               Relaybox.Ecto.enqueue(Relaybox.OtherDatabaseRepo, outbox, message(topic, 1))
             end)

    assert other =~ ~s(connected to database "postgres", not to the outbox's database)

    # An outbox that is not on PostgreSQL.
    sqlite = Outbox.open!("sqlite://#{Path.join(dir, "app.db")}?mode=rwc", migrate: true)

    assert {:ok, {:error, %Relaybox.Error{code: :invalid_config, message: dialect}}} =
             Repo.transaction(fn -> Relaybox.Ecto.enqueue(Repo, sqlite, message(topic, 1)) end)

    assert dialect =~ "PostgreSQL outbox; this outbox is on sqlite"
    assert {:ok, 0} = Outbox.pending_count(sqlite)

    # An invalid message inside a Multi: the Multi fails, its rows roll back.
    multi =
      Multi.new()
      |> Multi.insert(:order, %Order{ref: ref, total: 1})
      |> Relaybox.Ecto.enqueue(:event, outbox, %{topic: "no spaces allowed", payload: 1})

    assert {:error, :event, %Relaybox.Error{code: :invalid_topic}, %{order: _}} =
             Repo.transaction(multi)

    # An invalid message in a batch: none of the batch is written.
    assert {:ok, {:error, %Relaybox.Error{code: :invalid_message}}} =
             Repo.transaction(fn ->
               Relaybox.Ecto.enqueue_batch(Repo, outbox, [message(topic, 1), %{payload: 1}])
             end)

    assert orders(ref) == []
    assert pending(outbox) == 0

    # A consumer whose repo is not started does not start.
    Process.flag(:trap_exit, true)

    assert {:error, %Relaybox.Error{message: consumer_error}} =
             Handler.start_link(handler_opts(outbox, topic, ref, repo: Relaybox.StoppedRepo))

    assert consumer_error =~ "not started"
  end

  test "a handler that writes through the repo and raises commits nothing, is retried, then dead-lettered",
       %{outbox: outbox} do
    topic = "fail-#{unique()}"
    ref = unique()

    {:ok, id} =
      Repo.transaction(fn -> Relaybox.Ecto.enqueue!(Repo, outbox, message(topic, 5)) end)

    start_supervised!({Relaybox.Relay, outbox: outbox, poll_interval: 100})

    consumer =
      start_supervised!(
        {Handler, handler_opts(outbox, topic, ref, fail: :raise, max_retries: 2, retry_delay: 10)}
      )

    for _ <- 1..3, do: assert_receive({:handled, ^id, false, 0}, 15_000)

    [letter] =
      eventually("dead-lettered", fn ->
        case Outbox.dead_letters(outbox) do
          {:ok, [_] = letters} -> letters
          _ -> nil
        end
      end)

    assert letter["message"]["id"] == id
    assert letter["last_error"] =~ "handler exploded"

    assert {:ok, %{retried: 2, dead_lettered: 1, processed: 0}} =
             Relaybox.Consumer.stats(consumer)

    assert orders(ref) == []
    assert count!(outbox, "#{outbox_table(outbox, "inbox")}") == 0
  end

  test "a message processed through the repo and delivered again is skipped; its row exists once",
       %{outbox: outbox, prefix: prefix} do
    topic = "again-#{unique()}"
    ref = unique()

    {:ok, id} =
      Repo.transaction(fn -> Relaybox.Ecto.enqueue!(Repo, outbox, message(topic, 9)) end)

    start_supervised!({Relaybox.Relay, outbox: outbox, poll_interval: 100})
    opts = handler_opts(outbox, topic, ref, [])

    consumer = start_supervised!({Handler, opts})
    assert_receive {:handled, ^id, false, 0}, 15_000

    eventually("position stored", fn ->
      match?({:ok, %{processed: 1}}, Relaybox.Consumer.stats(consumer)) and
        sql!(outbox, "SELECT 1 FROM #{prefix}positions WHERE position > 0") != []
    end)

    :ok = stop_supervised(Handler)

    # The group's position goes back: the delivery comes again, as after a
    # crash between the repo's commit and the acknowledgement.
    sql!(outbox, "UPDATE #{prefix}positions SET position = 0")
    consumer = start_supervised!({Handler, opts})

    eventually("duplicate skipped", fn ->
      match?({:ok, %{duplicates: 1}}, Relaybox.Consumer.stats(consumer))
    end)

    refute_receive {:handled, _, _, _}, 300
    assert orders(ref) == [9]
  end

  test "a producer with the repo as @datastore writes in the caller's transaction, or in its own",
       %{prefix: prefix} do
    # The outbox registered under the repo's name is the producer's.
    outbox = Outbox.open!(db_url!(), table_prefix: prefix, name: Repo)

    on_exit(fn ->
      :persistent_term.erase({Outbox, Repo})
      Outbox.close(outbox)
    end)

    ref = unique()

    assert {:error, :no} =
             Repo.transaction(fn ->
               order = Repo.insert!(%Order{ref: ref, total: 3})

               {:ok, _} =
                 Producer.create_and_add_message_to_message_queue(order, :created, "orders")

               Repo.rollback(:no)
             end)

    assert orders(ref) == []
    assert pending(outbox) == 0

    {:ok, message} =
      Repo.transaction(fn ->
        order = Repo.insert!(%Order{ref: ref, total: 4})

        {:ok, message} =
          Producer.create_and_add_message_to_message_queue(order, :created, "orders")

        message
      end)

    assert message["type"] == "shop/order/created"
    assert [%{"version" => 1, "payload" => %{"total" => 4}}] = message["data"]
    assert orders(ref) == [4]

    assert {:ok, rt} = Producer.create_and_add_rt_notification_to_message_queue(%{session: "s1"})
    assert rt["topic"] == "realtime"

    assert sql!(outbox, "SELECT id::text AS id FROM #{prefix}outbox ORDER BY seq") ==
             [%{"id" => message["id"]}, %{"id" => rt["id"]}]

    # A message the outbox refuses rolls back the producer's own transaction.
    assert {:error, %Relaybox.Error{code: :invalid_topic}} =
             Producer.create_and_add_message_to_message_queue(
               %Order{id: 1, total: 1},
               :created,
               "bad topic"
             )

    assert pending(outbox) == 2
  end

  test "a consumer killed after its repo committed and before acknowledging: the redelivery is skipped",
       %{outbox: outbox} do
    topic = "killed-#{unique()}"
    ref = unique()
    hook = "kill-#{ref}"

    :ok =
      :telemetry.attach(
        hook,
        [:relaybox, :test_repo, :query],
        &__MODULE__.kill_after_commit/4,
        nil
      )

    on_exit(fn -> :telemetry.detach(hook) end)

    {:ok, id} =
      Repo.transaction(fn -> Relaybox.Ecto.enqueue!(Repo, outbox, message(topic, 6)) end)

    start_supervised!({Relaybox.Relay, outbox: outbox, poll_interval: 100})

    opts = handler_opts(outbox, topic, ref, [])

    killed =
      Supervisor.child_spec({Handler, [kill_after_commit: true] ++ opts}, restart: :temporary)

    first = start_supervised!(killed)
    monitor = Process.monitor(first)
    assert_receive {:handled, ^id, false, 0}, 15_000
    assert_receive {:DOWN, ^monitor, :process, ^first, :killed}, 15_000
    assert orders(ref) == [6]

    # Started again, the consumer gets the delivery again and skips it.
    second = start_supervised!(Supervisor.child_spec({Handler, opts}, id: :second))

    eventually("duplicate skipped", fn ->
      match?({:ok, %{duplicates: 1}}, Relaybox.Consumer.stats(second))
    end)

    refute_receive {:handled, _, _, _}, 300
    assert orders(ref) == [6]
    assert {:ok, []} = Outbox.dead_letters(outbox)
  end

  test "a group of 3 consumers with the repo splits a topic with no overlap and no gap",
       %{outbox: outbox} do
    topic = "group-#{unique()}"
    ref = unique()

    {:ok, ids} =
      Repo.transaction(fn ->
        Relaybox.Ecto.enqueue_batch!(Repo, outbox, for(n <- 1..30, do: message(topic, n)))
      end)

    start_supervised!({Relaybox.Relay, outbox: outbox, poll_interval: 100})

    for m <- 0..2 do
      opts =
        handler_opts(outbox, topic, ref,
          consumer_id: "member-#{m}",
          group_member: m,
          group_size: 3
        )

      start_supervised!(Supervisor.child_spec({Handler, opts}, id: {:member, m}))
    end

    handled =
      for _ <- 1..30 do
        assert_receive {:handled, id, false, member}, 20_000
        {id, member}
      end

    refute_receive {:handled, _, _, _}, 300
    assert handled |> Enum.map(&elem(&1, 0)) |> Enum.sort() == Enum.sort(ids)
    assert handled |> Enum.map(&elem(&1, 1)) |> Enum.uniq() |> Enum.sort() == [0, 1, 2]

    # Each key belongs to the member its CRC-32 hash names.
    by_id = Map.new(handled)

    for {id, n} <- Enum.zip(ids, 1..30),
        do: assert(rem(:erlang.crc32("k#{n}"), 3) == by_id[id])

    assert orders(ref) |> Enum.sort() == Enum.to_list(1..30)
  end

  test "mix relaybox.gen.migration writes a migration Ecto.Migrator applies, rolls back and applies again",
       %{tmp_dir: dir, prefix: prefix} do
    Mix.shell(Mix.Shell.Process)
    tables = "#{prefix}m_"

    path =
      Mix.Tasks.Relaybox.Gen.Migration.run([
        "--repo",
        "Relaybox.TestRepo",
        "--migrations-path",
        dir,
        "--prefix",
        tables
      ])

    assert [_, version] = Regex.run(~r/(\d{14})_add_relaybox_tables\.exs$/, path)
    [{migration, _}] = Code.compile_file(path)
    assert migration == Relaybox.TestRepo.Migrations.AddRelayboxTables
    migrations = [{String.to_integer(version), migration}]
    on_exit(fn -> Ecto.Migrator.run(Repo, migrations, :down, all: true, log: false) end)

    created = fn ->
      Repo.query!("SELECT tablename FROM pg_tables WHERE tablename LIKE $1", [tables <> "%"]).rows
      |> length()
    end

    assert [_] = Ecto.Migrator.run(Repo, migrations, :up, all: true, log: false)
    assert created.() == 11

    outbox = Outbox.open!(db_url!(), table_prefix: tables)

    assert {:ok, {:ok, _}} =
             Repo.transaction(fn -> Relaybox.Ecto.enqueue(Repo, outbox, message("t", 1)) end)

    assert pending(outbox) == 1

    assert [_] = Ecto.Migrator.run(Repo, migrations, :down, all: true, log: false)
    assert created.() == 0

    assert [_] = Ecto.Migrator.run(Repo, migrations, :up, all: true, log: false)
    assert created.() == 11
    assert pending(outbox) == 0
  end

  test "Relaybox.Migration.up/down called in an Ecto migration apply and revert the schema",
       %{prefix: prefix} do
    tables = "#{prefix}e_"
    module = Module.concat(__MODULE__, "EventodbKitStyle#{unique()}")

    [{^module, _}] =
      Code.compile_string("""
      defmodule #{inspect(module)} do
        use Ecto.Migration
        def up, do: Relaybox.Migration.up(version: 1, prefix: #{inspect(tables)})
        def down, do: Relaybox.Migration.down(version: 1, prefix: #{inspect(tables)})
      end
      """)

    migrations = [{20_260_101_000_002, module}]
    on_exit(fn -> Ecto.Migrator.run(Repo, migrations, :down, all: true, log: false) end)

    created = fn ->
      Repo.query!("SELECT count(*) FROM pg_tables WHERE tablename LIKE $1", [tables <> "%"]).rows
    end

    assert [_] = Ecto.Migrator.run(Repo, migrations, :up, all: true, log: false)
    assert created.() == [[11]]
    assert [_] = Ecto.Migrator.run(Repo, migrations, :down, all: true, log: false)
    assert created.() == [[0]]

    # Outside a migration they give the script.
    assert Relaybox.Migration.up(version: 1) =~ "CREATE TABLE IF NOT EXISTS relaybox_outbox"
  end

  defp outbox_table(outbox, table \\ "outbox") do
    {:ok, %{table_prefix: prefix}} = Outbox.info(outbox)
    prefix <> table
  end
end
