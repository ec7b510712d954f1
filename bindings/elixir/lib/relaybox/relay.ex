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
  `topic_partitions`, `properties`, ...), `:name`, and the relay settings
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

    with {:ok, %Outbox{ref: outbox}} <- Outbox.resolve(own[:outbox]),
         {:ok, relay} <-
           Native.relay_start(
             outbox,
             Spec.transport(own[:transport]),
             Spec.normalize(Map.new(settings))
           ) do
      {:ok, relay}
    else
      {:error, error} -> {:stop, error}
    end
  end

  @impl GenServer
  def handle_call(:stats, _from, relay), do: {:reply, Native.relay_stats(relay), relay}

  @impl GenServer
  def terminate(_reason, relay) do
    Native.call(&Native.relay_stop(relay, &1))
    :ok
  end
end
