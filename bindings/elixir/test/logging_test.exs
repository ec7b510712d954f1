defmodule Relaybox.LoggingTest do
  # Not async: `capture_log/2` sees the records of every process, and
  # `Relaybox.LogForwarder`'s level is global.
  use Relaybox.Case, async: false

  import ExUnit.CaptureLog

  require Logger

  defmodule Failing do
    @moduledoc "Fails every message, so the core dead-letters it."
    use Relaybox.Consumer

    @impl Relaybox.Consumer
    def init(opts), do: {:ok, Map.new(opts)}

    @impl Relaybox.Consumer
    def handle_message(_message, _state), do: {:error, "no stock for it"}
  end

  # Attaches a `:logger` handler that sends every event of the `:relaybox`
  # domain to the test process, so a test can look at levels and metadata.
  defp forward_events_to_test(level \\ :all) do
    id = :"relaybox_test_#{unique()}"
    test = self()

    :ok = :logger.add_handler(id, __MODULE__.Handler, %{config: %{test: test}, level: level})

    on_exit(fn -> :logger.remove_handler(id) end)
  end

  defmodule Handler do
    @moduledoc "A `:logger` handler that sends each relaybox event to a process."
    def log(%{meta: meta} = event, %{config: %{test: test}}) do
      if :relaybox in Map.get(meta, :domain, []), do: send(test, {:log_event, event})
      :ok
    end
  end

  # The first event whose text satisfies `predicate`, with `:text` and
  # `:skipped` (the texts of the events received before it) added.
  defp receive_event(what, predicate, skipped \\ []) do
    receive do
      {:log_event, %{msg: {:string, text}} = event} ->
        text = IO.chardata_to_string(text)

        if predicate.(text),
          do: Map.merge(event, %{text: text, skipped: Enum.reverse(skipped)}),
          else: receive_event(what, predicate, [text | skipped])
    after
      30_000 -> flunk("no log event #{what}")
    end
  end

  test "a dead-lettered message's warning reaches Logger with its fields", %{outbox: outbox} do
    topic = "log-dead-#{unique()}"

    [id] =
      Outbox.transaction!(outbox, fn tx ->
        Tx.enqueue_batch!(tx, [%{topic: topic, key: "k1", type: "T", payload: %{n: 1}}])
      end)

    forward_events_to_test()

    log =
      capture_log([level: :warning], fn ->
        start_supervised!({Relaybox.Relay, outbox: outbox, poll_interval: 100})

        start_supervised!(
          {Failing,
           outbox: outbox,
           topic: topic,
           consumer_id: "g-#{topic}",
           poll_interval: 100,
           max_retries: 0}
        )

        event = receive_event("'dead-lettered by consumer'", &(&1 =~ "dead-lettered by consumer"))

        assert event.level == :warning
        assert event.meta.id == id
        assert event.meta.group == "g-#{topic}"
        assert event.meta.attempts == 1
        assert event.meta.error == "no stock for it"
        assert event.meta.relaybox_target == "relaybox::consumer"

        assert event.meta.relaybox_fields == %{
                 id: id,
                 group: "g-#{topic}",
                 attempts: 1,
                 error: "no stock for it"
               }

        assert event.meta.file =~ ~r{core/src/consumer/\w+\.rs$}
        assert is_integer(event.meta.line)

        assert event.text ==
                 "relaybox message dead-lettered by consumer id=#{id} group=g-#{topic} attempts=1 error=no stock for it"

        # The console backend (what `capture_log/2` reads) has written it by now.
        Logger.flush()
      end)

    assert log =~ "[warning]"
    assert log =~ "relaybox message dead-lettered by consumer id=#{id}"
    # The warning comes just before the dead letter is written.
    eventually("the dead letter", fn ->
      match?({:ok, [%{"message" => %{"id" => ^id}}]}, Outbox.dead_letters(outbox))
    end)
  end

  test "levels: info is forwarded by default, :warning filters it, and every value type arrives" do
    forward_events_to_test()
    on_exit(fn -> Relaybox.LogForwarder.set_level(:info) end)

    :ok = Relaybox.Native.log_for_tests("info", "hello from the core", 1)

    event =
      receive_event("'hello from the core'", &String.starts_with?(&1, "hello from the core"))

    assert event.level == :info
    assert event.meta.relaybox_target == "relaybox::testing"

    assert event.meta.relaybox_fields == %{n: 0, flag: true, ratio: 0.5, text: "two words"}

    assert event.text == "hello from the core n=0 flag=true ratio=0.5 text=two words"

    :ok = Relaybox.LogForwarder.set_level(:warning)
    :ok = Relaybox.Native.log_for_tests("info", "filtered out", 1)
    :ok = Relaybox.Native.log_for_tests("error", "an error", 1)
    event = receive_event("'an error'", &String.starts_with?(&1, "an error"))
    assert event.level == :error
    refute Enum.any?(event.skipped, &String.starts_with?(&1, "filtered out"))

    assert {:error, "unknown log level" <> _} = Relaybox.LogForwarder.set_level(:loud)
  end

  @doc false
  # A `:logger` primary filter: drops the flood test's records, here and in
  # whatever of the flood still reaches `Logger` after that test.
  def drop_flood(%{meta: %{relaybox_target: "relaybox::testing"}, msg: {:string, text}}, _) do
    if String.starts_with?(IO.chardata_to_string(text), "flood "), do: :stop, else: :ignore
  end

  def drop_flood(_event, _), do: :ignore

  test "a flood the forwarder cannot keep up with is dropped and reported, never blocking" do
    # 200 000 records from a native thread: the core's queue holds 4096 and
    # at most 8 batches wait for this forwarder, so most are dropped.
    case :logger.add_primary_filter(:relaybox_test_flood, {&__MODULE__.drop_flood/2, nil}) do
      :ok -> :ok
      {:error, {:already_exist, _}} -> :ok
    end

    :ok = Relaybox.LogForwarder.set_level(:debug)
    on_exit(fn -> Relaybox.LogForwarder.set_level(:info) end)

    forward_events_to_test(:warning)
    before = Relaybox.LogForwarder.stats()["dropped"]

    :ok = Relaybox.Native.log_for_tests("debug", "flood", 200_000)

    event =
      receive_event("'relaybox log records dropped'", &(&1 =~ "relaybox log records dropped"))

    assert event.level == :warning
    assert event.meta.dropped > 0
    assert Relaybox.LogForwarder.stats()["dropped"] > before
  end
end
