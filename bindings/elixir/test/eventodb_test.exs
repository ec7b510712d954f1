defmodule Relaybox.EventodbTest do
  # Consumer groups on the real EventoDB server and Message DB, and seed
  # 001 (EventodbKit) as its README shows it, with `EventodbKit` renamed
  # `Relaybox.EventodbKit`, on the real server, real Ecto and PostgreSQL.
  use Relaybox.Case, async: true

  import Ecto.Query

  alias Relaybox.EventodbKit
  alias Relaybox.TestRepo, as: Repo

  @leads_version 20_260_201_000_001

  defmodule Lead do
    @moduledoc "The business row of the seed's examples."
    use Ecto.Schema

    schema "kit_test_leads" do
      field(:email, :string)
      field(:school_name, :string)
    end
  end

  defmodule CreateLeads do
    @moduledoc "The application's own migration: its leads table."
    use Ecto.Migration

    def change do
      create table(:kit_test_leads) do
        add(:email, :text, null: false)
        add(:school_name, :text)
      end
    end
  end

  defmodule Member do
    @moduledoc "A group member that tells the test which messages it handled."
    use Relaybox.Consumer

    @impl Relaybox.Consumer
    def init(opts), do: {:ok, Map.new(opts)}

    @impl Relaybox.Consumer
    def handle_message(message, state) do
      send(state.test, {:handled, state.group_member, message["id"], message["key"]})
      :ok
    end
  end

  # The seed's consumer, module names changed (and the category and the
  # poll interval given by the test).
  defmodule PartnershipConsumer do
    @moduledoc "Inserts a lead for each PartnershipApplicationSubmitted."
    use Relaybox.EventodbKit.Consumer
    require Logger

    def start_link(opts) do
      Relaybox.EventodbKit.Consumer.start_link(__MODULE__, opts)
    end

    @impl Relaybox.EventodbKit.Consumer
    def init(opts) do
      {:ok,
       %{
         namespace: Keyword.fetch!(opts, :namespace),
         category: Keyword.fetch!(opts, :category),
         consumer_id: "singleton",
         base_url: Keyword.fetch!(opts, :base_url),
         token: Keyword.fetch!(opts, :token),
         repo: Relaybox.TestRepo,
         prefix: Keyword.fetch!(opts, :prefix),
         poll_interval: 100,
         batch_size: 100
       }}
    end

    @impl Relaybox.EventodbKit.Consumer
    def handle_message(message, _state) do
      case message["type"] do
        "PartnershipApplicationSubmitted" ->
          %Lead{
            email: message["data"]["email"],
            school_name: message["data"]["school_name"]
          }
          |> Relaybox.TestRepo.insert!()

          :ok

        _ ->
          Logger.warning("Unknown event type: #{message["type"]}")
          :ok
      end
    end
  end

  # The seed's consumer group, module names changed (the category, the
  # table prefix and the poll interval given by the test).
  defmodule PartnershipConsumerGroup do
    @moduledoc "A member of a group of consumers inserting leads."
    use Relaybox.EventodbKit.Consumer

    @impl Relaybox.EventodbKit.Consumer
    def init(opts) do
      {:ok,
       %{
         namespace: Keyword.fetch!(opts, :namespace),
         category: Keyword.fetch!(opts, :category),
         consumer_id: "member-#{Keyword.fetch!(opts, :group_member)}",
         group_member: Keyword.fetch!(opts, :group_member),
         group_size: Keyword.fetch!(opts, :group_size),
         base_url: Keyword.fetch!(opts, :base_url),
         token: Keyword.fetch!(opts, :token),
         repo: Relaybox.TestRepo,
         prefix: Keyword.fetch!(opts, :prefix),
         poll_interval: 100,
         batch_size: 100
       }}
    end

    @impl Relaybox.EventodbKit.Consumer
    def handle_message(message, _state) do
      Relaybox.TestRepo.insert!(%Lead{email: message["data"]["email"]})
      :ok
    end
  end

  setup_all do
    Repo.start!(db_url!())
    migrations = [{@leads_version, CreateLeads}]
    Ecto.Migrator.run(Repo, migrations, :up, all: true, log: false)

    on_exit(fn ->
      Repo.start!(db_url!())
      Ecto.Migrator.run(Repo, migrations, :down, all: true, log: false)
    end)

    :ok
  end

  # The seed's Step 2: the kit's tables through an Ecto migration (under a
  # table prefix of the test's own).
  setup %{prefix: prefix} do
    tables = "#{prefix}kit_"
    module = Module.concat(__MODULE__, "AddKitTables#{unique()}")
    version = 20_260_201_000_000 + :erlang.unique_integer([:positive])

    [{^module, _}] =
      Code.compile_string("""
      defmodule #{inspect(module)} do
        use Ecto.Migration

        def up do
          Relaybox.Migration.up(version: 1, prefix: #{inspect(tables)})
        end

        def down do
          Relaybox.Migration.down(version: 1, prefix: #{inspect(tables)})
        end
      end
      """)

    migrations = [{version, module}]
    assert [_] = Ecto.Migrator.run(Repo, migrations, :up, all: true, log: false)
    on_exit(fn -> Ecto.Migrator.run(Repo, migrations, :down, all: true, log: false) end)

    %{
      tables: tables,
      base_url: env!("RELAYBOX_EVENTODB_URL"),
      token: env!("RELAYBOX_EVENTODB_TOKEN")
    }
  end

  defp outbox_rows(tables),
    do: Repo.query!("SELECT count(*) FROM #{tables}outbox").rows |> hd() |> hd()

  defp leads(email_like),
    do: Repo.all(from(l in Lead, where: like(l.email, ^email_like), select: l.email))

  for transport <- [:eventodb, :message_db] do
    test "a consumer group of 3 on #{transport} splits a category with no overlap and no gap",
         %{outbox: outbox, base_url: base_url, token: token} do
      transport =
        case unquote(transport) do
          :eventodb -> {:eventodb, url: base_url, token: token}
          :message_db -> {:message_db, url: env!("RELAYBOX_MESSAGE_DB_URL")}
        end

      category = "grp#{unique()}"

      ids =
        Outbox.transaction!(outbox, fn tx ->
          Tx.enqueue_batch!(
            tx,
            for(
              n <- 1..30,
              do: %{topic: category, key: "k#{rem(n, 15)}", type: "Numbered", payload: %{n: n}}
            )
          )
        end)

      start_supervised!(
        {Relaybox.Relay, outbox: outbox, transport: transport, poll_interval: 100}
      )

      for m <- 0..2 do
        opts = [
          outbox: outbox,
          test: self(),
          category: category,
          consumer_id: "member-#{m}",
          transport: transport,
          group_member: m,
          group_size: 3,
          poll_interval: 100
        ]

        start_supervised!(Supervisor.child_spec({Member, opts}, id: {:member, m}))
      end

      handled =
        for _ <- 1..30 do
          assert_receive {:handled, member, id, key}, 30_000
          %{member: member, id: id, key: key}
        end

      refute_receive {:handled, _, _, _}, 500
      assert handled |> Enum.map(& &1.id) |> Enum.sort() == Enum.sort(ids)
      assert handled |> Enum.map(& &1.member) |> Enum.uniq() |> Enum.sort() == [0, 1, 2]

      # A stream (here: a key) belongs to one member.
      for {key, of_key} <- Enum.group_by(handled, & &1.key) do
        assert of_key |> Enum.map(& &1.member) |> Enum.uniq() |> length() == 1, key
      end
    end
  end

  test "seed 001: stream_write commits with Repo.transaction, the sender ships it, the reads see it",
       %{tables: tables, base_url: base_url, token: token} do
    category = "partnership#{unique()}"

    kit = EventodbKit.Client.new(base_url, token: token, repo: Repo, prefix: tables)

    refute inspect(kit) =~ token

    # A rolled-back transaction leaves neither the lead nor the event.
    assert {:error, :changed_my_mind} =
             Repo.transaction(fn ->
               lead = Repo.insert!(%Lead{email: "#{category}-gone@example.com"})

               {:ok, _outbox_id, _kit} =
                 EventodbKit.stream_write(
                   kit,
                   "#{category}-gone#{lead.id}",
                   %{type: "LeadCreated", data: %{lead_id: lead.id}}
                 )

               Repo.rollback(:changed_my_mind)
             end)

    assert outbox_rows(tables) == 0
    assert leads("#{category}-%") == []

    # "Transactional write with business logic"
    {:ok, lead} =
      Repo.transaction(fn ->
        lead = Repo.insert!(%Lead{email: "#{category}-test@example.com"})

        {:ok, outbox_id, _kit} =
          EventodbKit.stream_write(
            kit,
            "#{category}-#{lead.id}",
            %{type: "LeadCreated", data: %{lead_id: lead.id}}
          )

        send(self(), {:outbox_id, outbox_id})
        lead
      end)

    assert_received {:outbox_id, outbox_id}
    stream = "#{category}-#{lead.id}"

    # Outside a transaction, with an expected version.
    {:ok, deposit_id, kit} =
      EventodbKit.stream_write(
        kit,
        stream,
        %{type: "Deposited", data: %{amount: 100}, metadata: %{source: "test"}},
        expected_version: 0
      )

    assert outbox_rows(tables) == 2
    # Nothing has reached the server yet: the outbox holds the events.
    assert {:ok, nil, _} = EventodbKit.stream_version(kit, stream)

    start_supervised!(
      {EventodbKit.OutboxSender,
       namespace: EventodbKit.Client.namespace_of(token),
       base_url: base_url,
       token: token,
       repo: Repo,
       prefix: tables,
       poll_interval: 1_000,
       batch_size: 100}
    )

    eventually("both events on the server", fn ->
      match?({:ok, 1, _}, EventodbKit.stream_version(kit, stream))
    end)

    assert {:ok, [created, deposited], _} = EventodbKit.stream_get(kit, stream)
    assert %{"id" => ^outbox_id, "type" => "LeadCreated", "position" => 0} = created
    assert created["data"] == %{"lead_id" => lead.id}
    assert created["stream_name"] == stream
    assert %{"id" => ^deposit_id, "type" => "Deposited", "position" => 1} = deposited
    assert deposited["metadata"]["source"] == "test"

    assert {:ok, %{"id" => ^deposit_id}, _} = EventodbKit.stream_last(kit, stream)

    assert {:ok, %{"id" => ^outbox_id}, _} =
             EventodbKit.stream_last(kit, stream, %{type: "LeadCreated"})

    assert {:ok, in_category, _} =
             EventodbKit.category_get(kit, category, %{position: 0, batch_size: 100})

    assert Enum.map(in_category, & &1["id"]) == [outbox_id, deposit_id]
    assert {:ok, nil, _} = EventodbKit.stream_version(kit, "#{category}-gone#{lead.id}")
    assert {:ok, nil, _} = EventodbKit.stream_last(kit, "#{category}-gone#{lead.id}")
  end

  test "seed 001: an idempotency key in data writes the event once",
       %{tables: tables, base_url: base_url, token: token} do
    kit = EventodbKit.Client.new(base_url, token: token, repo: Repo, prefix: tables)
    stream = "payment#{unique()}-456"

    message = %{
      type: "PaymentRequested",
      data: %{amount: 1000, idempotency_key: "payment_user123_invoice456"}
    }

    assert {:ok, first, kit} = EventodbKit.stream_write(kit, stream, message)
    assert {:ok, ^first, kit} = EventodbKit.stream_write(kit, stream, message)
    assert outbox_rows(tables) == 1

    # Inside the Repo's transaction the key cannot be settled: refused.
    assert {:error, %Relaybox.Error{code: :invalid_message, message: text}} =
             Repo.transaction(fn ->
               {:error, error} = EventodbKit.stream_write(kit, stream, message)
               Repo.rollback(error)
             end)

    assert text =~ "idempotency_key"
    assert outbox_rows(tables) == 1
  end

  test "seed 001: bad writes and a refused token are clear errors, nothing written",
       %{tables: tables, base_url: base_url, token: token} do
    kit = EventodbKit.Client.new(base_url, token: token, repo: Repo, prefix: tables)

    for {stream, message, what} <- [
          {"nocategoryid", %{type: "T", data: %{}}, "category"},
          {"acct-1", %{data: %{}}, "type"},
          {"acct-1", %{type: "T", data: [1, 2]}, "data"}
        ] do
      assert {:error, %Relaybox.Error{code: :invalid_message, message: msg}} =
               EventodbKit.stream_write(kit, stream, message)

      assert msg =~ what
    end

    assert {:error, %Relaybox.Error{code: :invalid_config}} =
             EventodbKit.stream_write(
               %{kit | repo: Relaybox.StoppedRepo},
               "acct-1",
               %{type: "T", data: %{}}
             )

    assert outbox_rows(tables) == 0

    wrong = String.replace(token, ~r/.$/, fn c -> if c == "0", do: "1", else: "0" end)
    refused = EventodbKit.Client.new(base_url, token: wrong, repo: Repo)

    assert {:error, %Relaybox.Error{code: :invalid_config, message: msg}} =
             EventodbKit.stream_version(refused, "acct-1")

    assert msg =~ "token"
    refute msg =~ wrong

    assert_raise Relaybox.Error, ~r/namespace/, fn ->
      EventodbKit.Client.new(base_url, token: token, repo: Repo, namespace: "someone-else")
    end

    assert_raise Relaybox.Error, ~r/base_url/, fn ->
      EventodbKit.Client.new("localhost:8080", token: token, repo: Repo)
    end

    # A sender for another namespace than its token's does not start.
    assert {:error, %Relaybox.Error{code: :invalid_config, message: msg}} =
             EventodbKit.OutboxSender.start_link(
               namespace: "someone-else",
               base_url: base_url,
               token: token,
               repo: Repo,
               prefix: tables
             )

    assert msg =~ "namespace"
    refute msg =~ token
  end

  test "seed 001: the consumer inserts through the repo, once per event",
       %{tables: tables, base_url: base_url, token: token} do
    category = "partnership#{unique()}"
    namespace = EventodbKit.Client.namespace_of(token)
    kit = EventodbKit.Client.new(base_url, token: token, repo: Repo, prefix: tables)

    for n <- 1..5 do
      {:ok, _, _} =
        EventodbKit.stream_write(kit, "#{category}-#{n}", %{
          type: "PartnershipApplicationSubmitted",
          data: %{email: "#{category}-#{n}@example.com", school_name: "School #{n}"}
        })
    end

    {:ok, _, _} =
      EventodbKit.stream_write(kit, "#{category}-6", %{type: "SomethingElse", data: %{}})

    start_supervised!(
      {EventodbKit.OutboxSender,
       namespace: namespace, base_url: base_url, token: token, repo: Repo, prefix: tables}
    )

    consumer =
      start_supervised!(
        {PartnershipConsumer,
         [
           namespace: namespace,
           token: token,
           base_url: base_url,
           category: category,
           prefix: tables
         ]}
      )

    eventually("the six events handled", fn ->
      {:ok, stats} = Relaybox.Consumer.stats(consumer)
      stats.processed == 6
    end)

    assert Enum.sort(leads("#{category}-%")) ==
             Enum.map(1..5, &"#{category}-#{&1}@example.com")

    # Restarted, the consumer resumes after what it processed.
    :ok = stop_supervised(PartnershipConsumer)

    {:ok, _, _} =
      EventodbKit.stream_write(kit, "#{category}-7", %{
        type: "PartnershipApplicationSubmitted",
        data: %{email: "#{category}-7@example.com"}
      })

    consumer =
      start_supervised!(
        {PartnershipConsumer,
         [
           namespace: namespace,
           token: token,
           base_url: base_url,
           category: category,
           prefix: tables
         ]}
      )

    eventually("the seventh event handled", fn ->
      {:ok, stats} = Relaybox.Consumer.stats(consumer)
      stats.processed == 1
    end)

    assert {:ok, %{duplicates: 0}} = Relaybox.Consumer.stats(consumer)
    assert length(leads("#{category}-%")) == 6
  end

  test "seed 001: a consumer group of 3 with the repo handles each event once",
       %{tables: tables, base_url: base_url, token: token} do
    category = "partnership#{unique()}"
    namespace = EventodbKit.Client.namespace_of(token)
    kit = EventodbKit.Client.new(base_url, token: token, repo: Repo, prefix: tables)

    for n <- 1..12 do
      {:ok, _, _} =
        EventodbKit.stream_write(kit, "#{category}-#{n}", %{
          type: "PartnershipApplicationSubmitted",
          data: %{email: "#{category}-#{n}@example.com"}
        })
    end

    start_supervised!(
      {EventodbKit.OutboxSender,
       namespace: namespace, base_url: base_url, token: token, repo: Repo, prefix: tables}
    )

    members =
      for m <- 0..2 do
        opts = [
          namespace: namespace,
          token: token,
          base_url: base_url,
          category: category,
          prefix: tables,
          group_member: m,
          group_size: 3
        ]

        start_supervised!(
          Supervisor.child_spec({PartnershipConsumerGroup, opts}, id: {:member, m})
        )
      end

    processed = fn ->
      for member <- members do
        {:ok, %{processed: n}} = Relaybox.Consumer.stats(member)
        n
      end
    end

    eventually("the twelve events handled", fn -> Enum.sum(processed.()) == 12 end)
    assert Enum.all?(processed.(), &(&1 > 0))

    assert Enum.sort(leads("#{category}-%")) ==
             Enum.sort(Enum.map(1..12, &"#{category}-#{&1}@example.com"))
  end
end
