defmodule Relaybox.Telemetry do
  @moduledoc """
  The `:telemetry` events relaybox emits, in the start/stop/exception shape
  Ecto and Oban use. Attach with `:telemetry.attach/4` or
  `:telemetry.attach_many/4`; durations are in `:native` time units
  (`System.convert_time_unit/3`).

  ## Enqueue

  `[:relaybox, :enqueue, :start | :stop | :exception]`, around every write
  of messages to the outbox: `Relaybox.Tx.enqueue/2`, `Relaybox.Tx.enqueue_batch/2`,
  `Relaybox.Ecto.enqueue/3` and its batch and `Ecto.Multi` forms, the
  `Relaybox.Producer` functions and `Relaybox.EventodbKit.stream_write/4`.

    * measurements: `:system_time` and `:monotonic_time` (start);
      `:duration`, `:monotonic_time` and `:count` (the number of messages;
      stop); `:duration` and `:monotonic_time` (exception).
    * metadata: `:topics` (distinct topics, in order), `:count`, `:repo`
      (the Ecto repo, or `nil` in a `Relaybox.Tx`); on stop also `:result`
      (`:ok` or `:error`), `:message_ids` (on success) and `:error` (the
      `Relaybox.Error`, on failure); on exception `:kind`, `:reason`,
      `:stacktrace`.

  ## Consumed messages

  `[:relaybox, :consumer, :message, :start | :stop | :exception]`, around
  each message a `Relaybox.Consumer` handles.

    * measurements: `:system_time` and `:monotonic_time` (start);
      `:duration` and `:monotonic_time` (stop, exception).
    * metadata: `:consumer` (the module), `:topic`, `:group` (the
      `consumer_id`), `:message_id`, `:type`, `:key`; on stop also
      `:status`: `:ok`, `:error` (retried, then dead-lettered), `:reject`
      (dead-lettered) or `:duplicate` (with `repo:`, a message whose inbox
      row already exists: the handler was not called), and `:reason` when
      the status is `:error` or `:reject`. A handler that raises or throws
      emits `:exception` (with `:kind`, `:reason`, `:stacktrace`) instead of
      `:stop`; the message is retried as with `{:error, reason}`.

  ## Relay batches

  `[:relaybox, :relay, :batch, :start | :stop]`, around each batch a
  `Relaybox.Relay` (or `Relaybox.EventodbKit.OutboxSender`) publishes to a
  broker (Kafka, RabbitMQ, Redis, SNS/SQS, Message DB, EventoDB). With the
  `:database` transport the relay moves rows into the store's log inside its
  claim transaction and publishes no batches, so these events are not
  emitted.

    * measurements: `:system_time`, `:monotonic_time` and `:count` (start);
      `:duration`, `:monotonic_time`, `:count`, `:delivered` and `:failed` (stop; failed messages are
      retried with backoff, then dead-lettered).
    * metadata: `:relay` (the relay process), `:transport` (e.g.
      `"eventodb"`), `:batch` (an id shared by a batch's start and stop),
      `:topics` (start).

  Relay events are emitted by the relay's process, enqueue and consumer
  events by the calling (or consumer) process.
  """

  @doc false
  # Runs `fun` (returning `{:ok, ids} | {:error, error}`) inside the enqueue events.
  @spec enqueue([map() | keyword() | String.t()], module() | nil, (() -> result)) :: result
        when result: {:ok, term()} | {:error, term()}
  def enqueue(messages, repo, fun) do
    metadata = %{topics: topics(messages), count: length(messages), repo: repo}

    :telemetry.span([:relaybox, :enqueue], metadata, fn ->
      result = fun.()

      stop =
        case result do
          {:ok, ids} -> Map.merge(metadata, %{result: :ok, message_ids: List.wrap(ids)})
          {:error, error} -> Map.merge(metadata, %{result: :error, error: error})
        end

      {result, %{count: metadata.count}, stop}
    end)
  end

  defp topics(messages) do
    messages
    |> Enum.map(fn
      %{topic: t} -> t
      %{"topic" => t} -> t
      list when is_list(list) -> Keyword.get(list, :topic)
      _ -> nil
    end)
    |> Enum.reject(&is_nil/1)
    |> Enum.uniq()
  end
end
