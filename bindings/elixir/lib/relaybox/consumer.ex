defmodule Relaybox.Consumer do
  @moduledoc """
  A GenServer that handles each message of a topic once: your
  `handle_message/2` runs in the same transaction as the inbox row that
  records the message as processed, so its writes commit with that row or
  not at all, and a message delivered again is skipped. Failures are
  retried with backoff and then dead-lettered. Its callbacks are those of
  EventodbKit's `use EventodbKit.Consumer`, whose settings it accepts too.

      defmodule MyApp.PartnershipConsumer do
        use Relaybox.Consumer

        @impl Relaybox.Consumer
        def init(opts) do
          {:ok,
           %{
             outbox: MyApp.Outbox,
             topic: "partnership",
             consumer_id: "member-\#{Keyword.fetch!(opts, :group_member)}",
             group_member: Keyword.fetch!(opts, :group_member),
             group_size: 3,
             poll_interval: 1_000,
             batch_size: 100
           }}
        end

        @impl Relaybox.Consumer
        def handle_message(%{"type" => "LeadCreated"} = message, _state) do
          Relaybox.Tx.query!(message["tx"], "INSERT INTO leads (email) VALUES ($1)",
                             [message["data"]["email"]])
          :ok
        end

        def handle_message(_message, _state), do: :ok
      end

      children = for m <- 0..2, do: Supervisor.child_spec({MyApp.PartnershipConsumer, group_member: m}, id: m)

  `init/1` receives the child's options and returns `{:ok, state}`, where the
  state (a map or keyword list) holds the settings below; the whole state is
  passed to `handle_message/2`.

  Settings: `:outbox` (handle or registered name, required), `:repo` (see
  "With an Ecto repo"), `:topic` (or EventodbKit's `:category`, required),
  `:consumer_id` (the consumer group: positions and the inbox are kept per
  id; required), `:group_member` and `:group_size` (split a
  topic between members with no overlap and no gap: on the database
  transport by key hash, on Message DB and EventoDB by stream),
  `:poll_interval` (ms), `:batch_size`, `:transport` (`:database`, the
  default, `{:kafka, opts}`, where Kafka splits partitions among consumers
  sharing a `consumer_id`, `{:message_db, opts}`, `{:eventodb, opts}`, ...),
  `:max_retries`, `:retry_delay`, `:retry_delay_max`, `:concurrency`
  (default 1), `:inbox_retention`.

  EventodbKit's settings are understood too: `:base_url` and `:token`
  (without `:transport`) read from that EventoDB server, `:namespace` keeps
  positions and the inbox per namespace (checked against the token), and
  `:repo` without `:outbox` uses the outbox on the repo's database (see
  `Relaybox.EventodbKit`; `:prefix` picks its tables). Other keys are left
  to you.

  Each message emits `[:relaybox, :consumer, :message, ...]` telemetry
  events (see `Relaybox.Telemetry`).

  ## Messages

  `handle_message/2` receives a map with string keys: `"id"`, `"topic"`,
  `"key"`, `"type"`, `"payload"` (the raw bytes), `"content_type"`,
  `"headers"`, `"created_at"`, `"available_at"`, `"data"` (the decoded payload
  when it is JSON, else `nil`) and `"tx"`: the `Relaybox.Tx` holding the inbox
  row. Write through `"tx"` (or `Relaybox.Consumer.tx/0`) and your writes commit
  atomically with "processed": a redelivered message is skipped.

  Return `:ok` (or `{:ok, new_state}`) to acknowledge; `{:error, reason}` or a
  raise retries with backoff up to `max_retries`, then the message goes to
  dead letters (`Relaybox.Outbox.dead_letters/2`); `{:reject, reason}`
  dead-letters it at once.

  ## With an Ecto repo

  The setting `repo: MyApp.Repo` (an `Ecto.Adapters.Postgres` repo on the
  outbox's database, checked at start) runs each message in
  `MyApp.Repo.transaction/1` instead: the transaction first inserts the
  message's inbox row for the group, then calls `handle_message/2`, whose
  `MyApp.Repo` writes commit with that row or not at all. The message is
  acknowledged after the commit. A raise, `{:error, reason}`,
  `{:reject, reason}` or `MyApp.Repo.rollback/1` rolls everything back, with
  the retries and dead letters above. A message whose inbox row exists
  already (delivered again after a crash between the commit and the
  acknowledgement) is skipped without calling the handler and counted in
  `duplicates`. The message has no `"tx"` in this mode.

  Messages are handled one at a time in this process. The core waits for the
  reply on its own threads, never on a BEAM scheduler. When this process
  stops it finishes the messages in flight first; if it is killed, the
  handler calls waiting for it fail and the core consumer shuts down in the
  background; unacknowledged messages come again (the inbox skips those
  already processed).
  """

  use GenServer

  alias Relaybox.{Native, Outbox, Spec, Tx}

  @doc "Returns the consumer's settings and state from the child's options."
  @callback init(opts :: keyword()) :: {:ok, map() | keyword()} | {:stop, term()}

  @doc "Handles one message; see the module documentation for the return values."
  @callback handle_message(message :: map(), state :: term()) ::
              :ok | {:ok, term()} | {:error, term()} | {:reject, term()}

  @settings [
    :batch_size,
    :poll_interval,
    :max_retries,
    :retry_delay,
    :retry_delay_max,
    :concurrency,
    :inbox_retention
  ]

  @doc false
  defmacro __using__(opts) do
    behaviour = Keyword.get(opts, :behaviour, Relaybox.Consumer)

    quote do
      @behaviour unquote(behaviour)

      @doc "Starts this consumer linked to the caller."
      def start_link(opts \\ []), do: Relaybox.Consumer.start_link(__MODULE__, opts)

      @doc "A child specification for `{#{inspect(__MODULE__)}, opts}`."
      def child_spec(opts) do
        %{
          id: __MODULE__,
          start: {__MODULE__, :start_link, [opts]},
          shutdown: 30_000
        }
      end

      defoverridable start_link: 1, child_spec: 1
    end
  end

  @doc """
  Starts a consumer process for `module` (which `use`s `Relaybox.Consumer`).
  `opts` go to `module.init/1`; `:name` registers the process.
  """
  @spec start_link(module(), keyword()) :: GenServer.on_start()
  def start_link(module, opts \\ []) do
    case Keyword.fetch(opts, :name) do
      {:ok, name} -> GenServer.start_link(__MODULE__, {module, opts}, name: name)
      :error -> GenServer.start_link(__MODULE__, {module, opts})
    end
  end

  @doc "Starts a consumer process for `module` without a link (see `start_link/2`)."
  @spec start(module(), keyword()) :: GenServer.on_start()
  def start(module, opts \\ []), do: GenServer.start(__MODULE__, {module, opts})

  @doc "Counters: `processed`, `duplicates`, `retried`, `dead_lettered`, `running`."
  @spec stats(GenServer.server()) :: {:ok, map()} | {:error, Relaybox.Error.t()}
  def stats(consumer), do: GenServer.call(consumer, :stats)

  @doc "Stops the consumer gracefully: messages in flight are finished first."
  @spec stop(GenServer.server()) :: :ok
  def stop(consumer), do: GenServer.stop(consumer, :normal, 30_000)

  @doc "The transaction of the message being handled in this process, or `nil`."
  @spec tx() :: Tx.t() | nil
  def tx, do: Process.get(:relaybox_consumer_tx)

  @impl GenServer
  def init({module, opts}) do
    Process.flag(:trap_exit, true)

    case module.init(opts) do
      {:ok, state} -> start_core(module, state)
      {:stop, reason} -> {:stop, reason}
      other -> {:stop, {:bad_init_return, other}}
    end
  end

  defp start_core(module, state) do
    settings = Map.new(state)
    topic = settings[:category] || settings[:topic]
    member = Map.get(settings, :group_member, 0)
    size = Map.get(settings, :group_size, 1)
    repo = settings[:repo]

    with :ok <- check(is_binary(topic), "category (or topic) must be a string"),
         :ok <- check(is_binary(settings[:consumer_id]), "consumer_id must be a string"),
         :ok <- check(is_integer(member) and member >= 0, "group_member must be an integer >= 0"),
         :ok <- check(is_integer(size) and size >= 1, "group_size must be an integer >= 1"),
         {:ok, transport} <- transport(settings),
         {:ok, group} <- group(settings),
         {:ok, outbox} <- outbox(settings),
         :ok <- check_repo(repo, outbox),
         config =
           settings
           |> Map.take(@settings)
           |> Map.put_new(:concurrency, 1)
           |> Map.put(:group, group),
         {:ok, consumer} <-
           Native.consumer_start(
             outbox.ref,
             Spec.transport(transport),
             topic,
             Spec.normalize(config),
             member,
             size,
             repo != nil
           ) do
      {:ok,
       %{
         module: module,
         state: state,
         consumer: consumer,
         repo: repo,
         meta: %{consumer: module, topic: topic, group: group}
       }}
    else
      {:error, error} -> {:stop, error}
    end
  end

  # EventodbKit's settings: `base_url` and `token` name the EventoDB server
  # (unless `transport` is given).
  defp transport(%{transport: transport}) when transport != nil, do: {:ok, transport}

  defp transport(%{base_url: url} = settings) when is_binary(url) do
    opts =
      [url: url, token: settings[:token]]
      |> Enum.reject(fn {_, v} -> is_nil(v) end)
      |> then(fn opts ->
        case settings[:poll_interval] do
          nil -> opts
          interval -> Keyword.put(opts, :poll_interval, interval)
        end
      end)

    {:ok, {:eventodb, opts}}
  end

  defp transport(_settings), do: {:ok, :database}

  # Positions and the inbox are kept per `consumer_id`, and per `namespace`
  # when one is given (checked against the EventoDB token that names one).
  defp group(%{namespace: namespace} = settings) when namespace != nil do
    with :ok <- check(is_binary(namespace), "namespace must be a string"),
         :ok <- Relaybox.EventodbKit.Client.check_namespace(namespace, settings[:token]) do
      {:ok, "#{namespace}/#{settings.consumer_id}"}
    end
  end

  defp group(settings), do: {:ok, settings.consumer_id}

  # Without `outbox`, a `repo` names the outbox on its database.
  defp outbox(%{outbox: nil, repo: repo} = settings) when repo != nil,
    do: Relaybox.Ecto.Host.outbox_for(repo, Map.take(settings, [:prefix]))

  defp outbox(%{outbox: outbox}), do: Outbox.resolve(outbox)

  defp outbox(%{repo: repo} = settings) when repo != nil,
    do: Relaybox.Ecto.Host.outbox_for(repo, Map.take(settings, [:prefix]))

  defp outbox(_settings), do: Outbox.resolve(nil)

  defp check_repo(nil, _outbox), do: :ok

  defp check_repo(repo, outbox) do
    with {:ok, _} <- Relaybox.Ecto.Host.check(repo, outbox, "Relaybox.Consumer with repo:"),
         do: :ok
  end

  defp check(true, _message), do: :ok
  defp check(false, message), do: {:error, Relaybox.Error.new(:invalid_config, message)}

  @impl GenServer
  def handle_info({:relaybox_message, call_id, message}, s) do
    {:noreply, handle(s, call_id, message)}
  end

  def handle_info({:relaybox_delivery, call_id, message, sql, params}, s) do
    {:noreply, handle_in_repo(s, call_id, message, sql, params)}
  end

  def handle_info({:EXIT, _pid, :normal}, s), do: {:noreply, s}
  def handle_info({:EXIT, _pid, reason}, s), do: {:stop, reason, s}
  def handle_info(_other, s), do: {:noreply, s}

  @impl GenServer
  def handle_call(:stats, _from, s), do: {:reply, Native.consumer_stats(s.consumer), s}

  defp handle(s, call_id, message) do
    case Native.consumer_tx(s.consumer, call_id) do
      {:ok, tx_ref} -> run_handler(s, call_id, message, %Tx{ref: tx_ref})
      {:error, _} -> s
    end
  end

  defp run_handler(s, call_id, message, tx) do
    Process.put(:relaybox_consumer_tx, tx)
    span = span_start(s, message)

    {status, reason, state} =
      try do
        s.module.handle_message(Map.put(message, "tx", tx), s.state)
      rescue
        e ->
          span_exception(span, :error, e, __STACKTRACE__)
          {:error, Exception.format(:error, e, __STACKTRACE__), s.state}
      catch
        kind, value ->
          span_exception(span, kind, value, __STACKTRACE__)
          {:error, Exception.format(kind, value, __STACKTRACE__), s.state}
      else
        :ok -> {:ok, "", s.state}
        {:ok, new_state} -> {:ok, "", new_state}
        {:error, reason} -> {:error, render(reason), s.state}
        {:reject, reason} -> {:reject, render(reason), s.state}
        other -> {:error, "handle_message/2 returned #{inspect(other)}", s.state}
      end

    Process.delete(:relaybox_consumer_tx)
    span_stop(status, reason)
    Native.consumer_reply(s.consumer, call_id, status, reason)
    %{s | state: state}
  end

  # The `[:relaybox, :consumer, :message, ...]` events (see `Relaybox.Telemetry`).
  defp span_start(s, message) do
    meta =
      Map.merge(s.meta, %{
        message_id: message["id"],
        type: message["type"],
        key: message["key"]
      })

    started = System.monotonic_time()

    :telemetry.execute(
      [:relaybox, :consumer, :message, :start],
      %{system_time: System.system_time(), monotonic_time: started},
      meta
    )

    %{meta: meta, started: started, raised: false}
    |> tap(&Process.put(:relaybox_consumer_span, &1))
  end

  defp span_exception(span, kind, reason, stacktrace) do
    now = System.monotonic_time()
    Process.put(:relaybox_consumer_span, %{span | raised: true})

    :telemetry.execute(
      [:relaybox, :consumer, :message, :exception],
      %{duration: now - span.started, monotonic_time: now},
      Map.merge(span.meta, %{kind: kind, reason: reason, stacktrace: stacktrace})
    )
  end

  defp span_stop(status, reason) do
    span = Process.delete(:relaybox_consumer_span)

    unless span.raised do
      now = System.monotonic_time()
      meta = Map.put(span.meta, :status, status)
      meta = if status in [:error, :reject], do: Map.put(meta, :reason, reason), else: meta

      :telemetry.execute(
        [:relaybox, :consumer, :message, :stop],
        %{duration: now - span.started, monotonic_time: now},
        meta
      )
    end
  end

  # The core's host mode: the inbox row and the handler's writes in one
  # transaction of the repo; the outcome is reported after it ended.
  defp handle_in_repo(s, call_id, message, sql, params) do
    repo = s.repo
    span = span_start(s, message)

    {status, reason, state} =
      try do
        repo.transaction(fn ->
          case repo.query(sql, params) do
            {:ok, %{num_rows: 1}} -> :ok
            {:ok, _} -> repo.rollback(:relaybox_duplicate)
            {:error, error} -> repo.rollback({:relaybox_inbox, error})
          end

          case call_in_repo(s, message, span) do
            :ok ->
              s.state

            {:ok, new_state} ->
              new_state

            {:error, reason} ->
              repo.rollback({:relaybox_error, reason})

            {:reject, reason} ->
              repo.rollback({:relaybox_reject, reason})

            other ->
              repo.rollback({:relaybox_error, "handle_message/2 returned #{inspect(other)}"})
          end
        end)
      rescue
        e -> {:error, Exception.format(:error, e, __STACKTRACE__), s.state}
      catch
        kind, value -> {:error, Exception.format(kind, value, __STACKTRACE__), s.state}
      else
        {:ok, new_state} ->
          {:ok, "", new_state}

        {:error, :relaybox_duplicate} ->
          {:duplicate, "", s.state}

        {:error, {:relaybox_error, reason}} ->
          {:error, render(reason), s.state}

        {:error, {:relaybox_reject, reason}} ->
          {:reject, render(reason), s.state}

        {:error, {:relaybox_inbox, e}} ->
          {:error, "the inbox INSERT failed: #{render(e)}", s.state}

        {:error, reason} ->
          {:error, "rolled back: #{render(reason)}", s.state}
      end

    span_stop(status, reason)
    Native.consumer_reply(s.consumer, call_id, status, reason)
    %{s | state: state}
  end

  # The handler inside the repo's transaction; a raise is reported, then
  # rolls the transaction back.
  defp call_in_repo(s, message, span) do
    s.module.handle_message(message, s.state)
  rescue
    e ->
      span_exception(span, :error, e, __STACKTRACE__)
      reraise e, __STACKTRACE__
  catch
    # `Repo.rollback/1` in the handler: a rollback, not a crash.
    :throw, {DBConnection, _ref, _reason} = value ->
      throw(value)

    kind, value ->
      span_exception(span, kind, value, __STACKTRACE__)
      :erlang.raise(kind, value, __STACKTRACE__)
  end

  defp render(reason) when is_binary(reason), do: reason
  defp render(%{__exception__: true} = e), do: Exception.message(e)
  defp render(reason), do: inspect(reason)

  @impl GenServer
  def terminate(_reason, s) do
    ref = make_ref()

    case Native.consumer_stop(s.consumer, ref) do
      :ok -> drain(s, ref)
      {:error, _} -> :ok
    end
  end

  defp drain(s, ref) do
    receive do
      {^ref, _result} ->
        :ok

      {:relaybox_message, call_id, message} ->
        s |> handle(call_id, message) |> drain(ref)

      {:relaybox_delivery, call_id, message, sql, params} ->
        s |> handle_in_repo(call_id, message, sql, params) |> drain(ref)
    end
  end
end
