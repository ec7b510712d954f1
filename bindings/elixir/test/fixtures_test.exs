defmodule Relaybox.FixturesTest do
  @moduledoc """
  The cross-language fixtures of `tests/fixtures`, the files every binding
  reads. The Elixir binding has no canonical JSON and no partition function:
  the envelopes are checked field by field after a round trip through the
  database transport, and `partitions.json` is not read here.
  """
  use Relaybox.Case, async: true

  @fixtures Path.expand("../../../tests/fixtures", __DIR__)

  defmodule Collector do
    @moduledoc "Sends every message it handles to the test process."
    use Relaybox.Consumer

    @impl Relaybox.Consumer
    def init(opts), do: {:ok, Map.new(opts)}

    @impl Relaybox.Consumer
    def handle_message(message, state) do
      send(state.test, {:handled, Map.delete(message, "tx")})
      :ok
    end
  end

  defp read_json!(path), do: path |> File.read!() |> Jason.decode!()

  # The spec of a canonical message: the same fields, the base64 payload
  # given as `payload_base64` (a spec's `payload` is a JSON value).
  defp spec_of(fields) do
    {payload, rest} = Map.pop!(fields, "payload")
    Map.put(rest, "payload_base64", payload)
  end

  test "the envelopes survive the database transport with every field", %{outbox: outbox} do
    files = Path.wildcard(Path.join(@fixtures, "envelopes/*.json"))
    assert length(files) >= 4
    expected = Enum.map(files, &read_json!/1)

    Outbox.transaction!(outbox, fn tx -> Enum.each(expected, &Tx.enqueue!(tx, spec_of(&1))) end)
    start_supervised!({Relaybox.Relay, outbox: outbox, poll_interval: 50})

    for topic <- expected |> Enum.map(& &1["topic"]) |> Enum.uniq() do
      opts = [
        outbox: outbox,
        topic: topic,
        consumer_id: "fixtures",
        poll_interval: 50,
        test: self()
      ]

      start_supervised!(Supervisor.child_spec({Collector, opts}, id: topic))
    end

    got =
      for _ <- expected, into: %{} do
        assert_receive {:handled, message}, 15_000
        {message["id"], message}
      end

    for fields <- expected do
      message = Map.fetch!(got, fields["id"])

      assert %{
               "topic" => message["topic"],
               "key" => message["key"],
               "type" => message["type"],
               "payload" => Base.encode64(message["payload"]),
               "content_type" => message["content_type"],
               "headers" => message["headers"],
               "created_at" => DateTime.to_iso8601(message["created_at"]),
               "available_at" => DateTime.to_iso8601(message["available_at"])
             } == Map.delete(fields, "id")
    end
  end

  test "every invalid message is rejected with its code and writes nothing", %{
    outbox: outbox,
    prefix: prefix
  } do
    cases = read_json!(Path.join(@fixtures, "invalid_messages.json"))
    assert length(cases) >= 10
    assert Enum.any?(cases, &(&1["name"] == "available_at before created_at"))

    outboxes =
      for limit <- cases |> Enum.map(& &1["max_payload_bytes"]) |> Enum.uniq(), into: %{} do
        case limit do
          nil ->
            {nil, outbox}

          bytes ->
            {bytes,
             Outbox.open!(db_url!(),
               migrate: true,
               table_prefix: "#{prefix}#{bytes}_",
               max_payload_bytes: bytes
             )}
        end
      end

    for %{"name" => name, "message" => message, "error_code" => code} = c <- cases do
      box = Map.fetch!(outboxes, c["max_payload_bytes"])
      assert {:error, %Relaybox.Error{code: got}} = Outbox.enqueue(box, spec_of(message))
      assert Atom.to_string(got) == code, "#{name}: #{got}"
    end

    for {_, box} <- outboxes, do: assert({:ok, 0} = Outbox.pending_count(box))
    for {bytes, box} <- outboxes, bytes != nil, do: Outbox.close(box)
  end
end
