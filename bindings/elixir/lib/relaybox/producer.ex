defmodule Relaybox.Producer do
  @moduledoc """
  A producer module for your application. `use Relaybox.Producer` gives it
  `create_and_add_message_to_message_queue/3`, which turns a struct and an
  event (`:created`, `:updated`, `:destroyed`) into a versioned message and
  writes it to the relaybox outbox, and
  `create_and_add_rt_notification_to_message_queue/1`, which writes a
  realtime notification; the relays then deliver both. The module keeps the
  API of WokAsyncMessageHandler's producer
  (`use WokAsyncMessageHandler.Bases.Ecto`): its settings, serializers and
  function names are that library's.

      defmodule MyApp.Services.MessageProducer do
        @producer_name "my_app"
        @realtime_topic "realtime"
        @datastore MyApp.Repo              # your Ecto repo (or an outbox's name)
        @serializers MyApp.MessageSerializers
        use Relaybox.Producer
      end

      defmodule MyApp.MessageSerializers.User do
        def message_versions, do: [1, 2]
        def created(user, 1), do: %{id: user.id, name: user.name}
        def created(user, 2), do: %{id: user.id, first_name: user.first, last_name: user.last}
        def updated(user, v), do: created(user, v)
        def destroyed(user, _version), do: %{id: user.id}
        def partition_key(user), do: user.id
        def message_route(event), do: "my_app/user/\#{event}"
      end

      {:ok, message} = MyApp.Services.MessageProducer.create_and_add_message_to_message_queue(user, :created, "users")
      {:ok, message} = MyApp.Services.MessageProducer.create_and_add_rt_notification_to_message_queue(%{session_id: "s1"})

  The serializer of a struct is `@serializers` joined with the last part of
  the struct's module name (`MyApp.User` → `MyApp.MessageSerializers.User`).

  A message's payload is the versioned body of WokAsyncMessageHandler, one
  entry per version of `message_versions/0`, as JSON:
  `[{"version": 1, "payload": {...}}, ...]`. Its key is `partition_key/1` (as
  a string), its type the route `message_route(event)`, and its headers
  `source` and `from` (the producer name) and `to` (the route).

  A realtime notification goes to `@realtime_topic` with the body
  `[{"version": 1, "payload": map + {"source": producer_name}}]`, the first
  value of the map as its key, and the route `"<producer>/real_time/notify"`.

  ## `@datastore`

  An Ecto repo (`Ecto.Adapters.Postgres`): the functions write through it
  with `Relaybox.Ecto`, inside the caller's `MyApp.Repo.transaction/1` when
  one is open (the message commits or rolls back with your rows), in a
  transaction of their own otherwise. The outbox the relays read is the one
  registered under `@outbox`, by default under the repo's name:
  `{Relaybox.Outbox, url: url, name: MyApp.Repo}` in your supervision tree.

  Or the name of a `Relaybox.Outbox` (or its handle): each function then
  writes in a transaction of its own, and the variants taking a
  `Relaybox.Tx` first write inside yours. `message_spec/3` and
  `rt_notification_spec/1` return the spec only (for
  `Relaybox.Outbox.insert_sql/3` inside an Ecto transaction). Both return
  `{:ok, message}` with the message as a consumer's handler receives it
  (without `"tx"`).
  """

  alias Relaybox.{Error, Native, Outbox, Tx}

  @doc false
  defmacro __using__(_opts) do
    outbox = Module.get_attribute(__CALLER__.module, :outbox)

    quote do
      @doc "The producer's settings, from its module attributes."
      def __relaybox_producer__ do
        %{
          producer_name: @producer_name,
          realtime_topic: @realtime_topic,
          datastore: @datastore,
          outbox: unquote(outbox),
          serializers: @serializers
        }
      end

      @doc "Enqueues `event` (`:created`, `:updated` or `:destroyed`) of `struct` to `topic`."
      def create_and_add_message_to_message_queue(struct, event, topic),
        do: Relaybox.Producer.add_message(__relaybox_producer__(), nil, struct, event, topic)

      @doc "Like `create_and_add_message_to_message_queue/3`, inside the transaction `tx`."
      def create_and_add_message_to_message_queue(%Relaybox.Tx{} = tx, struct, event, topic),
        do: Relaybox.Producer.add_message(__relaybox_producer__(), tx, struct, event, topic)

      @doc "Enqueues a realtime notification carrying `map` to the realtime topic."
      def create_and_add_rt_notification_to_message_queue(map),
        do: Relaybox.Producer.add_rt_notification(__relaybox_producer__(), nil, map)

      @doc "Like `create_and_add_rt_notification_to_message_queue/1`, inside `tx`."
      def create_and_add_rt_notification_to_message_queue(%Relaybox.Tx{} = tx, map),
        do: Relaybox.Producer.add_rt_notification(__relaybox_producer__(), tx, map)

      @doc "The message spec of `event` of `struct` for `topic`, without writing it."
      def message_spec(struct, event, topic),
        do: Relaybox.Producer.message_spec(__relaybox_producer__(), struct, event, topic)

      @doc "The message spec of a realtime notification, without writing it."
      def rt_notification_spec(map),
        do: Relaybox.Producer.rt_notification_spec(__relaybox_producer__(), map)
    end
  end

  @doc "The spec of `event` of `struct` on `topic` for a producer's `config`."
  @spec message_spec(map(), struct(), atom() | String.t(), String.t()) ::
          {:ok, map()} | {:error, Error.t()}
  def message_spec(config, %module{} = struct, event, topic) do
    serializer = Module.concat(config.serializers, module |> Module.split() |> List.last())
    event = to_event(event)

    cond do
      not Code.ensure_loaded?(serializer) ->
        {:error,
         Error.new(:invalid_value, "no serializer #{inspect(serializer)} for #{inspect(module)}")}

      not function_exported?(serializer, event, 2) ->
        {:error, Error.new(:invalid_value, "#{inspect(serializer)} has no #{event}/2 serializer")}

      true ->
        body =
          for version <- serializer.message_versions() do
            %{version: version, payload: apply(serializer, event, [struct, version])}
          end

        route = serializer.message_route(event)

        {:ok,
         %{
           topic: topic,
           key: key_string(serializer.partition_key(struct)),
           type: route,
           payload: body,
           headers: headers(config, route)
         }}
    end
  end

  def message_spec(_config, other, _event, _topic),
    do: {:error, Error.new(:invalid_value, "expected a struct, got #{inspect(other)}")}

  @doc "The spec of a realtime notification of `map` for a producer's `config`."
  @spec rt_notification_spec(map(), map()) :: {:ok, map()} | {:error, Error.t()}
  def rt_notification_spec(config, map) when is_map(map) and map_size(map) > 0 do
    route = "#{config.producer_name}/real_time/notify"

    {:ok,
     %{
       topic: config.realtime_topic,
       key: map |> Map.values() |> List.first() |> key_string(),
       type: route,
       payload: [%{version: 1, payload: Map.merge(%{source: config.producer_name}, map)}],
       headers: headers(config, route)
     }}
  end

  def rt_notification_spec(_config, other),
    do:
      {:error,
       Error.new(:invalid_value, "a notification is a non-empty map, got #{inspect(other)}")}

  @doc "Builds and enqueues a message (in `tx`, or in a transaction of its own when `nil`)."
  @spec add_message(map(), Tx.t() | nil, struct(), atom(), String.t()) ::
          {:ok, map()} | {:error, Error.t()}
  def add_message(config, tx, struct, event, topic) do
    with {:ok, spec} <- message_spec(config, struct, event, topic), do: write(config, tx, spec)
  end

  @doc "Builds and enqueues a realtime notification."
  @spec add_rt_notification(map(), Tx.t() | nil, map()) :: {:ok, map()} | {:error, Error.t()}
  def add_rt_notification(config, tx, map) do
    with {:ok, spec} <- rt_notification_spec(config, map), do: write(config, tx, spec)
  end

  defp write(config, tx, spec) do
    with {:ok, message} <- Native.build_message(Relaybox.Spec.message(spec)) do
      spec = Map.put(spec, :id, message["id"])

      result =
        case tx do
          %Tx{} -> Tx.enqueue(tx, spec)
          nil -> enqueue(config, spec)
        end

      with {:ok, _id} <- result, do: {:ok, message}
    end
  end

  defp enqueue(%{datastore: store} = config, spec) do
    if repo?(store) do
      enqueue_in_repo(store, Map.get(config, :outbox) || store, spec)
    else
      Outbox.enqueue(store, spec)
    end
  end

  defp repo?(store),
    do:
      is_atom(store) and Code.ensure_loaded?(store) and function_exported?(store, :__adapter__, 0)

  @integration "Relaybox.Producer with an Ecto repo as @datastore"

  defp enqueue_in_repo(repo, outbox, spec) do
    with :ok <- Relaybox.Ecto.Host.check_repo(repo, @integration) do
      if repo.in_transaction?() do
        one(Relaybox.Ecto.Host.write(repo, outbox, [spec], @integration))
      else
        repo.transaction(fn ->
          case one(Relaybox.Ecto.Host.write(repo, outbox, [spec], @integration)) do
            {:ok, id} -> id
            {:error, error} -> repo.rollback(error)
          end
        end)
      end
    end
  end

  defp one({:ok, [id]}), do: {:ok, id}
  defp one({:error, _} = error), do: error

  defp headers(config, route) do
    %{"source" => config.producer_name, "from" => config.producer_name, "to" => route}
  end

  defp to_event(event) when event in [:created, :updated, :destroyed], do: event
  defp to_event(event) when is_binary(event), do: String.to_existing_atom(event)
  defp to_event(event), do: event

  defp key_string(nil), do: nil
  defp key_string(key) when is_binary(key), do: key
  defp key_string(key), do: to_string(key)
end
