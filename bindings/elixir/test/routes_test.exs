defmodule Relaybox.RoutesTest do
  use Relaybox.Case, async: true

  test "a relay given routes serves their topics only, each to its destination", %{
    outbox: outbox,
    prefix: prefix
  } do
    {:ok, _} =
      Outbox.transaction(outbox, fn tx ->
        for topic <- ["orders.created", "billing", "audit"] do
          Tx.enqueue_batch(
            tx,
            for(n <- 0..2, do: %{topic: topic, key: "k#{n}", payload: %{n: n}})
          )
        end
      end)

    routes = [
      [topics: ["orders.*"], destination: "eu.{topic}"],
      [topics: ["billing"], transport: :database]
    ]

    start_supervised!(
      {Relaybox.Relay, outbox: outbox, transport: {:routes, routes}, poll_interval: 50}
    )

    eventually("the routed topics delivered", fn -> Outbox.pending_count(outbox) == {:ok, 3} end)

    {:ok, status} = Outbox.status(outbox)
    assert [audit] = Enum.filter(status["topics"], &(&1["topic"] == "audit"))
    assert audit["pending"] == 3 and audit["served"] == false

    assert [%{"topic" => "billing", "n" => 3}, %{"topic" => "eu.orders.created", "n" => 3}] =
             sql!(
               outbox,
               "SELECT topic, count(*)::int AS n FROM #{prefix}log GROUP BY topic ORDER BY topic"
             )
  end

  test "bad routes fail the start with :invalid_config", %{outbox: outbox} do
    Process.flag(:trap_exit, true)

    assert {:error, %Relaybox.Error{code: :invalid_config, message: message}} =
             Relaybox.Relay.start_link(
               outbox: outbox,
               transport: {:routes, [[topics: ["bad topic"]]]}
             )

    assert message =~ "topic pattern"
  end
end
