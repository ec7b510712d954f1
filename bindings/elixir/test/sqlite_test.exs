defmodule Relaybox.SqliteTest do
  use ExUnit.Case, async: true

  alias Relaybox.{Outbox, Tx}

  @moduletag :tmp_dir

  defmodule Echo do
    @moduledoc "Tells the test about each message."
    use Relaybox.Consumer

    @impl Relaybox.Consumer
    def init(opts), do: {:ok, Map.new(opts)}

    @impl Relaybox.Consumer
    def handle_message(message, state) do
      Tx.execute!(message["tx"], "INSERT INTO seen (id) VALUES (?)", [message["id"]])
      send(state.test, {:echo, message})
      :ok
    end
  end

  test "the same API works on an embedded SQLite file", %{tmp_dir: dir} do
    outbox = Outbox.open!("sqlite://#{Path.join(dir, "app.db")}?mode=rwc", migrate: true)
    Outbox.transaction!(outbox, &Tx.execute!(&1, "CREATE TABLE seen (id TEXT PRIMARY KEY)"))

    assert {:error, :no} =
             Outbox.transaction(outbox, fn tx ->
               Tx.enqueue!(tx, %{topic: "lite", payload: "dropped"})
               {:error, :no}
             end)

    id = Outbox.transaction!(outbox, &Tx.enqueue!(&1, %{topic: "lite", payload_text: "kept"}))

    start_supervised!({Relaybox.Relay, outbox: outbox, poll_interval: 50})

    start_supervised!(
      {Echo, outbox: outbox, test: self(), topic: "lite", consumer_id: "lite", poll_interval: 50}
    )

    assert_receive {:echo, %{"id" => ^id, "payload" => "kept", "data" => nil}}, 15_000
    refute_receive {:echo, _}, 300
  end
end
