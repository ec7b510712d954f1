defmodule Relaybox.EventodbKit.Consumer do
  @moduledoc """
  A GenServer that handles each event of a category of the EventoDB server
  once: your `handle_message/2` runs in a transaction of your repo that
  also records the event as processed, so its writes commit with that
  record or not at all, and an event delivered again is skipped. It is
  `Relaybox.Consumer` reading from the server, with the API of EventodbKit's
  `use EventodbKit.Consumer`.

      defmodule MyApp.PartnershipConsumer do
        use Relaybox.EventodbKit.Consumer

        def start_link(opts), do: Relaybox.EventodbKit.Consumer.start_link(__MODULE__, opts)

        @impl Relaybox.EventodbKit.Consumer
        def init(opts) do
          {:ok,
           %{
             namespace: Keyword.fetch!(opts, :namespace),
             category: "partnership",
             consumer_id: "singleton",
             base_url: "http://localhost:8080",
             token: Keyword.fetch!(opts, :token),
             repo: MyApp.Repo,
             poll_interval: 1_000,
             batch_size: 100
           }}
        end

        @impl Relaybox.EventodbKit.Consumer
        def handle_message(message, _state) do
          MyApp.Repo.insert!(%MyApp.Lead{email: message["data"]["email"]})
          :ok
        end
      end

  The settings keep EventodbKit's meaning: `:base_url` and `:token` name
  the server, `:category` the category read, `:consumer_id` the consumer
  (positions and processed events are kept per namespace and consumer id),
  `:repo` the repo whose transaction holds each message's processed-event
  row and the handler's writes (commit together, or neither), `:namespace`
  (checked against the token), `:poll_interval` (ms between reads when the
  category has nothing new), `:batch_size`, `:group_member` and
  `:group_size` (the server splits the category by stream among the
  members). Everything else is as in `Relaybox.Consumer`.
  """

  @doc "Returns the consumer's settings from the child's options."
  @callback init(opts :: keyword()) :: {:ok, map() | keyword()} | {:stop, term()}

  @doc "Handles one message: `:ok`, `{:ok, state}`, `{:error, reason}` or `{:reject, reason}`."
  @callback handle_message(message :: map(), state :: term()) ::
              :ok | {:ok, term()} | {:error, term()} | {:reject, term()}

  @doc false
  defmacro __using__(_opts) do
    quote do
      use Relaybox.Consumer, behaviour: Relaybox.EventodbKit.Consumer
    end
  end

  @doc "Starts a consumer process for `module`; see `Relaybox.Consumer.start_link/2`."
  @spec start_link(module(), keyword()) :: GenServer.on_start()
  defdelegate start_link(module, opts \\ []), to: Relaybox.Consumer
end
