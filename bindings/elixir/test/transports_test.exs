defmodule Relaybox.TransportsTest do
  use Relaybox.Case, async: true

  defmodule Seen do
    @moduledoc "Writes each message into a table through its transaction."
    use Relaybox.Consumer

    @impl Relaybox.Consumer
    def init(opts), do: {:ok, Map.new(opts)}

    @impl Relaybox.Consumer
    def handle_message(message, state) do
      Relaybox.Tx.execute!(
        message["tx"],
        "INSERT INTO #{state.prefix}seen (id, key, n) VALUES ($1, $2, $3)",
        [message["id"], message["key"], message["data"]["n"]]
      )

      send(state.test, {:seen, message})
      :ok
    end
  end

  for {name, url_env} <- [rabbitmq: "RELAYBOX_RABBITMQ_URL", redis: "RELAYBOX_REDIS_URL"] do
    test "relay to the real #{name} and consume once, in order per key", %{
      outbox: outbox,
      prefix: prefix
    } do
      transport = {unquote(name), url: env!(unquote(url_env))}
      topic = "ex_#{unquote(name)}_#{unique()}"
      sql!(outbox, "CREATE TABLE #{prefix}seen (id text PRIMARY KEY, key text, n int)")

      start_supervised!(
        {Seen,
         outbox: outbox,
         prefix: prefix,
         test: self(),
         category: topic,
         consumer_id: "ex-#{unique()}",
         transport: transport,
         poll_interval: 100}
      )

      start_supervised!(
        {Relaybox.Relay, outbox: outbox, transport: transport, poll_interval: 100}
      )

      ids =
        Outbox.transaction!(outbox, fn tx ->
          Tx.enqueue_batch!(
            tx,
            for(
              n <- 1..20,
              do: %{topic: topic, key: "k#{rem(n, 2)}", type: "Numbered", payload: %{n: n}}
            )
          )
        end)

      received =
        for _ <- 1..20 do
          assert_receive {:seen, message}, 60_000
          message
        end

      refute_receive {:seen, _}, 500
      assert received |> Enum.map(& &1["id"]) |> Enum.sort() == Enum.sort(ids)

      for key <- ["k0", "k1"] do
        numbers = for %{"key" => ^key, "data" => %{"n" => n}} <- received, do: n
        assert numbers == Enum.sort(numbers), "order of #{key}: #{inspect(numbers)}"
      end

      eventually("committed", fn -> count!(outbox, "#{prefix}seen") == 20 end)
    end
  end

  test "an unknown transport is a config error", %{outbox: outbox} do
    Process.flag(:trap_exit, true)

    assert {:error, %Relaybox.Error{code: :invalid_config}} =
             Relaybox.Relay.start_link(outbox: outbox, transport: {:carrier_pigeon, []})
  end
end
