defmodule Relaybox.TelemetryTest do
  # Not async: handlers attached here see the events of every process.
  use Relaybox.Case, async: false

  defmodule Handler do
    @moduledoc "Handles `n == 1`, raises for `n == 2`, rejects `n == 3`."
    use Relaybox.Consumer

    @impl Relaybox.Consumer
    def init(opts), do: {:ok, Map.new(opts)}

    @impl Relaybox.Consumer
    def handle_message(message, _state) do
      case message["data"]["n"] do
        1 -> :ok
        2 -> raise ArgumentError, "handler exploded"
        3 -> {:reject, "not for us"}
      end
    end
  end

  defmodule RepoHandler do
    @moduledoc "With `repo:`: a Repo query, then `:ok` for `n == 1`, a raise for `n == 2`."
    use Relaybox.Consumer

    @impl Relaybox.Consumer
    def init(opts), do: {:ok, Map.new(opts)}

    @impl Relaybox.Consumer
    def handle_message(message, _state) do
      Relaybox.TestRepo.query!("SELECT 1")

      case message["data"]["n"] do
        1 -> :ok
        2 -> raise ArgumentError, "handler exploded"
      end
    end
  end

  @events for(
            prefix <- [[:relaybox, :enqueue], [:relaybox, :consumer, :message]],
            suffix <- [:start, :stop, :exception],
            do: prefix ++ [suffix]
          ) ++ [[:relaybox, :relay, :batch, :start], [:relaybox, :relay, :batch, :stop]]

  @doc "Forwards the events about the test's topic (and all relay batches) to the test."
  def forward(event, measurements, metadata, %{test: test, topic: topic}) do
    about_topic? =
      metadata[:topic] == topic or topic in List.wrap(metadata[:topics]) or
        match?([:relaybox, :relay | _], event)

    if about_topic?, do: send(test, {:telemetry, event, measurements, metadata})
  end

  setup %{test: name} do
    topic = "tele#{unique()}"
    id = {__MODULE__, name}

    :ok =
      :telemetry.attach_many(id, @events, &__MODULE__.forward/4, %{test: self(), topic: topic})

    on_exit(fn -> :telemetry.detach(id) end)
    %{topic: topic}
  end

  test "enqueue, relay batches and consumed messages emit start/stop/exception events",
       %{outbox: outbox, topic: topic} do
    [id1, id2, id3] =
      Outbox.transaction!(outbox, fn tx ->
        Tx.enqueue_batch!(
          tx,
          for(n <- 1..3, do: %{topic: topic, key: "k#{n}", type: "Numbered", payload: %{n: n}})
        )
      end)

    assert_received {:telemetry, [:relaybox, :enqueue, :start], %{system_time: _},
                     %{topics: [^topic], count: 3, repo: nil}}

    assert_received {:telemetry, [:relaybox, :enqueue, :stop], %{duration: d, count: 3},
                     %{result: :ok, message_ids: [^id1, ^id2, ^id3]}}

    assert d >= 0

    # A refused message: a stop event with the error.
    assert {:error, %Relaybox.Error{}} =
             Outbox.transaction(outbox, &Tx.enqueue(&1, %{topic: topic, payload: %{}, bad: 1}))

    assert_received {:telemetry, [:relaybox, :enqueue, :stop], _,
                     %{result: :error, error: %Relaybox.Error{}}}

    transport =
      {:eventodb, url: env!("RELAYBOX_EVENTODB_URL"), token: env!("RELAYBOX_EVENTODB_TOKEN")}

    relay =
      start_supervised!(
        {Relaybox.Relay, outbox: outbox, transport: transport, poll_interval: 100}
      )

    start_supervised!(
      {Handler,
       outbox: outbox,
       category: topic,
       consumer_id: "tele",
       transport: transport,
       max_retries: 0,
       poll_interval: 100}
    )

    # The relay's batches: three messages delivered in all.
    delivered = relay_delivered(relay, 0)
    assert delivered == 3

    assert_receive {:telemetry, [:relaybox, :consumer, :message, :stop], %{duration: _},
                    %{
                      message_id: ^id1,
                      status: :ok,
                      topic: ^topic,
                      group: "tele",
                      type: "Numbered"
                    }},
                   30_000

    assert_receive {:telemetry, [:relaybox, :consumer, :message, :exception], %{duration: _},
                    %{message_id: ^id2, kind: :error, reason: %ArgumentError{}}},
                   30_000

    assert_receive {:telemetry, [:relaybox, :consumer, :message, :stop], _,
                    %{message_id: ^id3, status: :reject, reason: "not for us"}},
                   30_000

    for id <- [id1, id2, id3] do
      assert_received {:telemetry, [:relaybox, :consumer, :message, :start], %{system_time: _},
                       %{message_id: ^id, consumer: Handler}}
    end

    # The raising handler's message was not also reported as a stop.
    refute_received {:telemetry, [:relaybox, :consumer, :message, :stop], _, %{message_id: ^id2}}
  end

  # Sums the `delivered` of the relay's batch stop events until three messages are in.
  defp relay_delivered(_relay, sum) when sum >= 3, do: sum

  defp relay_delivered(relay, sum) do
    assert_receive {:telemetry, [:relaybox, :relay, :batch, :start], %{count: count},
                    %{relay: ^relay, transport: "eventodb", batch: batch, topics: [_ | _]}},
                   30_000

    assert_receive {:telemetry, [:relaybox, :relay, :batch, :stop],
                    %{count: ^count, delivered: delivered, failed: 0, duration: _},
                    %{relay: ^relay, batch: ^batch}},
                   30_000

    relay_delivered(relay, sum + delivered)
  end

  test "a consumer with repo: emits stop, or exception when its handler raises in the transaction",
       %{outbox: outbox, topic: topic} do
    Relaybox.TestRepo.start!(db_url!())

    [id1, id2] =
      Outbox.transaction!(outbox, fn tx ->
        Tx.enqueue_batch!(
          tx,
          for(n <- 1..2, do: %{topic: topic, key: "k#{n}", type: "Numbered", payload: %{n: n}})
        )
      end)

    start_supervised!({Relaybox.Relay, outbox: outbox, poll_interval: 100})

    start_supervised!(
      {RepoHandler,
       outbox: outbox,
       repo: Relaybox.TestRepo,
       category: topic,
       consumer_id: "tele-repo",
       max_retries: 0,
       poll_interval: 100}
    )

    assert_receive {:telemetry, [:relaybox, :consumer, :message, :stop], _,
                    %{message_id: ^id1, status: :ok, group: "tele-repo"}},
                   30_000

    assert_receive {:telemetry, [:relaybox, :consumer, :message, :exception], _,
                    %{message_id: ^id2, kind: :error, reason: %ArgumentError{}}},
                   30_000

    eventually("dead-lettered", fn -> match?({:ok, [_]}, Outbox.dead_letters(outbox)) end)
    refute_received {:telemetry, [:relaybox, :consumer, :message, :stop], _, %{message_id: ^id2}}
  end
end
