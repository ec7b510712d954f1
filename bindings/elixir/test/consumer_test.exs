defmodule Relaybox.ConsumerTest do
  use Relaybox.Case, async: true

  defmodule Recorder do
    @moduledoc "Records each message in a table through the handler's transaction and tells the test."
    use Relaybox.Consumer

    @impl Relaybox.Consumer
    def init(opts), do: {:ok, Map.new(opts)}

    @impl Relaybox.Consumer
    def handle_message(message, state) do
      tx = message["tx"]
      assert_same_tx(tx)

      Relaybox.Tx.execute!(
        tx,
        "INSERT INTO #{state.prefix}seen (id, member, n) VALUES ($1, $2, $3)",
        [
          message["id"],
          Map.get(state, :group_member, 0),
          message["data"]["n"]
        ]
      )

      send(state.test, {:handled, Map.get(state, :group_member, 0), message})

      case state[:fail] do
        nil -> :ok
        :error -> {:error, :not_today}
        :raise -> raise ArgumentError, "handler exploded"
        :reject -> {:reject, "cannot be handled"}
      end
    end

    defp assert_same_tx(tx), do: ^tx = Relaybox.Consumer.tx()
  end

  defp seen_table(outbox, prefix) do
    sql!(outbox, "CREATE TABLE #{prefix}seen (id text PRIMARY KEY, member int, n int)")
  end

  defp enqueue_numbered(outbox, topic, range) do
    Outbox.transaction!(outbox, fn tx ->
      Tx.enqueue_batch!(
        tx,
        for(n <- range, do: %{topic: topic, key: "k#{n}", type: "Numbered", payload: %{n: n}})
      )
    end)
  end

  defp consumer_opts(outbox, prefix, topic, extra) do
    [
      outbox: outbox,
      prefix: prefix,
      test: self(),
      category: topic,
      consumer_id: "g-#{topic}",
      poll_interval: 100
    ]
    |> Keyword.merge(extra)
  end

  test "a committed event is relayed and handled exactly once, with its writes", %{
    outbox: outbox,
    prefix: prefix
  } do
    seen_table(outbox, prefix)
    topic = "orders-#{unique()}"
    [id] = enqueue_numbered(outbox, topic, [1])

    start_supervised!({Relaybox.Relay, outbox: outbox, poll_interval: 100})
    consumer = start_supervised!({Recorder, consumer_opts(outbox, prefix, topic, [])})

    assert_receive {:handled, 0, message}, 15_000
    assert message["id"] == id
    assert message["type"] == "Numbered"
    assert message["key"] == "k1"
    assert message["topic"] == topic
    assert message["content_type"] == "application/json"
    assert message["payload"] == ~s({"n":1})
    assert message["data"] == %{"n" => 1}
    assert %DateTime{} = message["created_at"]

    eventually("processed", fn ->
      match?({:ok, %{processed: 1}}, Relaybox.Consumer.stats(consumer))
    end)

    assert [%{"id" => ^id, "n" => 1}] = sql!(outbox, "SELECT id, n FROM #{prefix}seen")
    refute_receive {:handled, _, _}, 500
  end

  test "a redelivered message is deduplicated by the inbox", %{outbox: outbox, prefix: prefix} do
    seen_table(outbox, prefix)
    topic = "dedup-#{unique()}"
    enqueue_numbered(outbox, topic, 1..5)
    start_supervised!({Relaybox.Relay, outbox: outbox, poll_interval: 100})
    opts = consumer_opts(outbox, prefix, topic, [])

    start_supervised!({Recorder, opts})
    for _ <- 1..5, do: assert_receive({:handled, 0, _}, 15_000)

    eventually("positions stored", fn ->
      sql!(outbox, "SELECT 1 FROM #{prefix}positions") != []
    end)

    :ok = stop_supervised(Recorder)

    # Rewind the group's position: every message is delivered again.
    sql!(outbox, "UPDATE #{prefix}positions SET position = 0")
    consumer = start_supervised!({Recorder, opts})

    eventually("duplicates skipped", fn ->
      match?({:ok, %{duplicates: 5}}, Relaybox.Consumer.stats(consumer))
    end)

    refute_receive {:handled, _, _}, 300
    assert count!(outbox, "#{prefix}seen") == 5
  end

  for mode <- [:error, :raise] do
    test "a failing handler (#{mode}) retries, then dead-letters, rolling back its writes", %{
      outbox: outbox,
      prefix: prefix
    } do
      seen_table(outbox, prefix)
      topic = "fail-#{unique()}"
      [id] = enqueue_numbered(outbox, topic, [7])
      start_supervised!({Relaybox.Relay, outbox: outbox, poll_interval: 100})

      consumer =
        start_supervised!(
          {Recorder,
           consumer_opts(outbox, prefix, topic,
             fail: unquote(mode),
             max_retries: 2,
             retry_delay: 10
           )}
        )

      for _ <- 1..3, do: assert_receive({:handled, 0, %{"id" => ^id}}, 15_000)
      refute_receive {:handled, _, _}, 300

      letters =
        eventually("dead letter", fn ->
          match?({:ok, [_]}, Outbox.dead_letters(outbox)) && Outbox.dead_letters(outbox)
        end)

      assert {:ok, [letter]} = letters
      assert letter["message"]["id"] == id
      assert letter["origin"] =~ "consumer"

      assert letter["last_error"] =~
               if(unquote(mode) == :error, do: "not_today", else: "handler exploded")

      assert {:ok, %{retried: 2, dead_lettered: 1, processed: 0}} =
               Relaybox.Consumer.stats(consumer)

      assert count!(outbox, "#{prefix}seen") == 0
    end
  end

  test "{:reject, reason} dead-letters at once", %{outbox: outbox, prefix: prefix} do
    seen_table(outbox, prefix)
    topic = "reject-#{unique()}"
    enqueue_numbered(outbox, topic, [1])
    start_supervised!({Relaybox.Relay, outbox: outbox, poll_interval: 100})

    start_supervised!(
      {Recorder, consumer_opts(outbox, prefix, topic, fail: :reject, max_retries: 5)}
    )

    assert_receive {:handled, 0, _}, 15_000

    eventually("dead letter", fn ->
      match?({:ok, [%{"last_error" => "cannot be handled"}]}, Outbox.dead_letters(outbox))
    end)

    refute_receive {:handled, _, _}, 300

    {:ok, [%{"message" => %{"id" => id}}]} = Outbox.dead_letters(outbox)
    assert {:error, %Relaybox.Error{}} = Outbox.purge_dead_letters(outbox, ["not-an-id"])
    assert {:ok, 0} = Outbox.purge_dead_letters(outbox, ["00000000-0000-7000-8000-000000000000"])
    assert {:ok, 1} = Outbox.purge_dead_letters(outbox, [id])
    assert {:ok, []} = Outbox.dead_letters(outbox)
    assert {:ok, 0} = Outbox.retry_dead_letters(outbox)
  end

  test "a group of 3 splits a topic without overlap or gap and resumes from stored positions", %{
    outbox: outbox,
    prefix: prefix
  } do
    seen_table(outbox, prefix)
    topic = "group-#{unique()}"
    enqueue_numbered(outbox, topic, 1..60)
    start_supervised!({Relaybox.Relay, outbox: outbox, poll_interval: 100})

    start_members = fn ->
      for m <- 0..2 do
        opts =
          consumer_opts(outbox, prefix, topic,
            consumer_id: "member-#{m}",
            group_member: m,
            group_size: 3
          )

        start_supervised!(Supervisor.child_spec({Recorder, opts}, id: {:member, m}))
      end
    end

    stop_members = fn -> for m <- 0..2, do: :ok = stop_supervised({:member, m}) end

    start_members.()
    first = receive_handled(60)
    stop_members.()

    assert first |> Enum.map(& &1.n) |> Enum.sort() == Enum.to_list(1..60)
    assert first |> Enum.map(& &1.member) |> Enum.uniq() |> Enum.sort() == [0, 1, 2]
    # Each key belongs to the member its CRC-32 hash names.
    for %{n: n, member: m} <- first, do: assert(rem(:erlang.crc32("k#{n}"), 3) == m)

    enqueue_numbered(outbox, topic, 61..90)
    start_members.()
    second = receive_handled(30)
    refute_receive {:handled, _, _}, 500

    assert second |> Enum.map(& &1.n) |> Enum.sort() == Enum.to_list(61..90)
    assert count!(outbox, "#{prefix}seen") == 90
  end

  defp receive_handled(count) do
    for _ <- 1..count do
      assert_receive {:handled, member, message}, 20_000
      %{member: member, n: message["data"]["n"]}
    end
  end

  test "bad consumer settings stop the start with a clear reason", %{
    outbox: outbox,
    prefix: prefix
  } do
    Process.flag(:trap_exit, true)

    assert {:error, %Relaybox.Error{code: :invalid_config, message: msg}} =
             Relaybox.Consumer.start_link(
               Recorder,
               consumer_opts(outbox, prefix, "t", group_member: 3, group_size: 3)
             )

    assert msg =~ "group"

    assert {:error, %Relaybox.Error{code: :invalid_config, message: msg}} =
             Relaybox.Consumer.start_link(
               Recorder,
               consumer_opts(outbox, prefix, "t", batch_size: 0)
             )

    assert msg =~ "batch_size"

    assert {:error, %Relaybox.Error{code: :invalid_config}} =
             Relaybox.Relay.start_link(outbox: outbox, poll_intervall: 5)
  end

  test "killing the consumer process stops the core consumer; a restart picks up", %{
    outbox: outbox,
    prefix: prefix
  } do
    seen_table(outbox, prefix)
    topic = "kill-#{unique()}"
    start_supervised!({Relaybox.Relay, outbox: outbox, poll_interval: 100})
    opts = consumer_opts(outbox, prefix, topic, [])
    {:ok, pid} = Relaybox.Consumer.start(Recorder, opts)
    enqueue_numbered(outbox, topic, [1])
    assert_receive {:handled, 0, _}, 15_000
    Process.exit(pid, :kill)
    enqueue_numbered(outbox, topic, [2])
    refute_receive {:handled, _, _}, 1_000

    start_supervised!({Recorder, opts})
    assert_receive {:handled, 0, %{"data" => %{"n" => 2}}}, 15_000
    eventually("both committed", fn -> count!(outbox, "#{prefix}seen") == 2 end)
  end

  test "killing the relay process stops the core relay; another one takes over", %{
    outbox: outbox
  } do
    opts = [outbox: outbox, poll_interval: 50, lease_ttl: 1_000]
    {:ok, relay} = GenServer.start(Relaybox.Relay, opts)

    eventually("leases held", fn ->
      match?({:ok, %{partitions_held: 16}}, Relaybox.Relay.stats(relay))
    end)

    monitor = Process.monitor(relay)
    Process.exit(relay, :kill)
    assert_receive {:DOWN, ^monitor, :process, ^relay, :killed}
    # The core relay shuts down in the background once its owner is gone.
    Process.sleep(300)

    Outbox.enqueue(outbox, %{topic: "orphan", payload: 1})
    Process.sleep(500)
    assert {:ok, 1} = Outbox.pending_count(outbox)

    start_supervised!({Relaybox.Relay, opts})

    eventually(
      "delivered by the new relay",
      fn -> Outbox.pending_count(outbox) == {:ok, 0} end,
      10_000
    )
  end
end
