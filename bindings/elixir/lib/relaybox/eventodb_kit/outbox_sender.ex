defmodule Relaybox.EventodbKit.OutboxSender do
  @moduledoc """
  Sends the events `Relaybox.EventodbKit.stream_write/4` wrote to the
  EventoDB server, in the background: a supervised `Relaybox.Relay` reading
  the outbox on the repo's database. It is EventodbKit's
  `EventodbKit.OutboxSender`, with the same options.

      children = [
        MyApp.Repo,
        {Relaybox.EventodbKit.OutboxSender,
         namespace: "analytics",
         base_url: "http://localhost:8080",
         token: System.get_env("ANALYTICS_TOKEN"),
         repo: MyApp.Repo,
         poll_interval: 1_000,
         batch_size: 100}
      ]

  Options: `:namespace` (required; the namespace the events go to, checked
  against the token when the token names one), `:base_url` (required),
  `:token`, `:repo` (required), `:poll_interval` (ms between looks at the
  outbox when no commit wakes the sender, default 1 000), `:batch_size`
  (default 100), and `:prefix`, `:outbox`, `:name`. Several senders (on
  several nodes) share the work; each message is sent once, in order per
  stream, retried with backoff while the server is down, and dead-lettered
  when the server refuses it for good. One outbox (table prefix) feeds one
  namespace: give each namespace its own `prefix:`.
  """

  alias Relaybox.Error
  alias Relaybox.EventodbKit.Client

  @doc "A child specification for `{Relaybox.EventodbKit.OutboxSender, opts}`."
  def child_spec(opts) do
    %{
      id: {__MODULE__, opts[:name] || opts[:namespace]},
      start: {__MODULE__, :start_link, [opts]},
      shutdown: 30_000
    }
  end

  @doc "Starts the sender (a `Relaybox.Relay` process) linked to the caller."
  @spec start_link(keyword()) :: GenServer.on_start()
  def start_link(opts) do
    with {:ok, namespace} <- fetch(opts, :namespace),
         {:ok, base_url} <- fetch(opts, :base_url),
         {:ok, repo} <- fetch(opts, :repo),
         :ok <- Client.check_namespace(namespace, opts[:token]),
         {:ok, outbox} <- outbox(repo, opts) do
      transport = Enum.reject([url: base_url, token: opts[:token]], fn {_, v} -> is_nil(v) end)

      [
        outbox: outbox,
        transport: {:eventodb, transport},
        poll_interval: Keyword.get(opts, :poll_interval, 1_000),
        batch_size: Keyword.get(opts, :batch_size, 100)
      ]
      |> then(&if(opts[:name], do: Keyword.put(&1, :name, opts[:name]), else: &1))
      |> Relaybox.Relay.start_link()
    end
  end

  defp outbox(repo, opts) do
    case opts[:outbox] do
      nil -> Relaybox.Ecto.Host.outbox_for(repo, prefix: opts[:prefix])
      outbox -> Relaybox.Outbox.resolve(outbox)
    end
  end

  defp fetch(opts, key) do
    case opts[key] do
      nil -> {:error, Error.new("Relaybox.EventodbKit.OutboxSender needs #{inspect(key)}")}
      value -> {:ok, value}
    end
  end
end
