defmodule Relaybox.Relay do
  @moduledoc """
  A relay as a supervised child: it moves committed outbox rows to the broker,
  in order per key, retrying failures with backoff and dead-lettering what
  keeps failing. Several relays (on several nodes) share the partitions
  through leases.

      children = [
        {Relaybox.Outbox, url: url, name: MyApp.Outbox, migrate: true},
        {Relaybox.Relay,
         outbox: MyApp.Outbox,
         transport: {:kafka, bootstrap_servers: "localhost:9092"},
         poll_interval: 1_000,
         batch_size: 100}
      ]

  Options: `:outbox` (a handle or registered name, required), `:transport`
  (`:database`, the default, appends to the store's own log table;
  `{:kafka, opts}` with `bootstrap_servers`, `create_topics`,
  `topic_partitions`, `properties`, `transactional_id` (exactly-once
  publishing, docs/kafka.md), ...; `{:routes, [[topics: ["orders.*"],
  transport: ..., destination: ...], ...]}` sends each topic to the first
  route that matches it, and the relay then claims only the routes' topics),
  `:name`, and the relay settings
  `:poll_interval` and `:batch_size` (as EventodbKit's OutboxSender),
  `:lease_ttl`, `:max_attempts`, `:backoff_initial`, `:backoff_max`,
  `:publish_timeout`, `:retention` (durations in ms or `"5s"`), `:instance_id`,
  `:concurrency`. Unknown options fail the start with `:invalid_config`.

  The core relay runs on the core's threads; this process only owns it. When
  it stops, it finishes the batch in flight and hands its partitions over;
  if it is killed, the core relay notices (it monitors its owner) and shuts
  down the same way in the background.
  """

  use GenServer

  alias Relaybox.{Native, Outbox, Spec}

  @own_options [:outbox, :transport, :name]

  @doc "Starts a relay process linked to the caller."
  @spec start_link(keyword()) :: GenServer.on_start()
  def start_link(opts) do
    case Keyword.fetch(opts, :name) do
      {:ok, name} -> GenServer.start_link(__MODULE__, opts, name: name)
      :error -> GenServer.start_link(__MODULE__, opts)
    end
  end

  @doc "A child specification for `{Relaybox.Relay, opts}`."
  def child_spec(opts) do
    %{
      id: Keyword.get(opts, :name, __MODULE__),
      start: {__MODULE__, :start_link, [opts]},
      shutdown: 30_000
    }
  end

  @doc """
  Counters: `delivered`, `retried`, `dead_lettered`, `batches`, `claims`
  (claims run against the outbox, those that found nothing included),
  `partitions_held`, plus `running` and `owner` (the lease owner id).
  """
  @spec stats(GenServer.server()) :: {:ok, map()} | {:error, Relaybox.Error.t()}
  def stats(relay), do: GenServer.call(relay, :stats)

  @doc "Stops the relay gracefully."
  @spec stop(GenServer.server()) :: :ok
  def stop(relay), do: GenServer.stop(relay, :normal, 30_000)

  @impl GenServer
  def init(opts) do
    Process.flag(:trap_exit, true)
    {own, settings} = Keyword.split(opts, @own_options)

    transport = Spec.transport(own[:transport])

    with {:ok, %Outbox{ref: outbox}} <- Outbox.resolve(own[:outbox]),
         {:ok, relay} <-
           Native.relay_start(outbox, transport, Spec.normalize(Map.new(settings))) do
      {:ok, %{relay: relay, transport: transport_name(transport)}}
    else
      {:error, error} -> {:stop, error}
    end
  end

  defp transport_name(name) when is_binary(name), do: name
  defp transport_name(%{} = map), do: map |> Map.keys() |> List.first() |> to_string()
  defp transport_name(_), do: nil

  @impl GenServer
  def handle_call(:stats, _from, s), do: {:reply, Native.relay_stats(s.relay), s}

  # The core's sink reports each batch it publishes (see `Relaybox.Telemetry`).
  @impl GenServer
  def handle_info({:relaybox_relay_batch, :start, batch, count, topics}, s) do
    :telemetry.execute(
      [:relaybox, :relay, :batch, :start],
      %{system_time: System.system_time(), monotonic_time: System.monotonic_time(), count: count},
      %{relay: self(), transport: s.transport, batch: batch, topics: topics}
    )

    {:noreply, s}
  end

  def handle_info(
        {:relaybox_relay_batch, :stop, batch, count, delivered, failed, duration_us},
        s
      ) do
    :telemetry.execute(
      [:relaybox, :relay, :batch, :stop],
      %{
        duration: System.convert_time_unit(duration_us, :microsecond, :native),
        monotonic_time: System.monotonic_time(),
        count: count,
        delivered: delivered,
        failed: failed
      },
      %{relay: self(), transport: s.transport, batch: batch}
    )

    {:noreply, s}
  end

  def handle_info(_other, s), do: {:noreply, s}

  @impl GenServer
  def terminate(_reason, s) do
    Native.call(&Native.relay_stop(s.relay, &1))
    :ok
  end
end
