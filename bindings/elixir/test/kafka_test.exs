defmodule Relaybox.KafkaTest do
  use Relaybox.Case, async: true

  defmodule Seen do
    @moduledoc "Writes each Kafka message into a table through its transaction."
    use Relaybox.Consumer

    @impl Relaybox.Consumer
    def init(opts), do: {:ok, Map.new(opts)}

    @impl Relaybox.Consumer
    def handle_message(message, state) do
      Relaybox.Tx.execute!(
        message["tx"],
        "INSERT INTO #{state.prefix}seen (id, key, n) VALUES ($1, $2, $3)",
        [
          message["id"],
          message["key"],
          message["data"]["n"]
        ]
      )

      send(state.test, {:kafka, message})
      :ok
    end
  end

  test "relay to the real Kafka broker and consume once, in order per key", %{
    outbox: outbox,
    prefix: prefix
  } do
    kafka = {:kafka, bootstrap_servers: kafka!(), create_topics: true}
    topic = "ex-orders-#{unique()}"
    sql!(outbox, "CREATE TABLE #{prefix}seen (id text PRIMARY KEY, key text, n int)")

    ids =
      Outbox.transaction!(outbox, fn tx ->
        Tx.enqueue_batch!(
          tx,
          for(
            n <- 1..30,
            do: %{topic: topic, key: "k#{rem(n, 3)}", type: "Numbered", payload: %{n: n}}
          )
        )
      end)

    relay =
      start_supervised!({Relaybox.Relay, outbox: outbox, transport: kafka, poll_interval: 100})

    eventually("relayed to Kafka", fn ->
      match?({:ok, %{delivered: 30}}, Relaybox.Relay.stats(relay))
    end)

    start_supervised!(
      {Seen,
       outbox: outbox,
       prefix: prefix,
       test: self(),
       category: topic,
       consumer_id: "ex-kafka-#{unique()}",
       transport: kafka,
       poll_interval: 100}
    )

    received =
      for _ <- 1..30 do
        assert_receive {:kafka, message}, 60_000
        message
      end

    refute_receive {:kafka, _}, 500
    assert received |> Enum.map(& &1["id"]) |> Enum.sort() == Enum.sort(ids)
    assert hd(received)["type"] == "Numbered"

    for key <- ["k0", "k1", "k2"] do
      numbers = for %{"key" => ^key, "data" => %{"n" => n}} <- received, do: n
      assert numbers == Enum.sort(numbers), "order of #{key}: #{inspect(numbers)}"
    end

    eventually("committed", fn -> count!(outbox, "#{prefix}seen") == 30 end)
  end

  test "group_size is rejected on Kafka, where the broker splits partitions", %{outbox: outbox} do
    Process.flag(:trap_exit, true)

    assert {:error, %Relaybox.Error{code: :invalid_config, message: msg}} =
             Relaybox.Consumer.start_link(Seen,
               outbox: outbox,
               category: "t",
               consumer_id: "g",
               group_member: 0,
               group_size: 3,
               transport: {:kafka, bootstrap_servers: kafka!()}
             )

    assert msg =~ "consumer_id"
  end
end
