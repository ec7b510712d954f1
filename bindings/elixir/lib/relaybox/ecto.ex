if Code.ensure_loaded?(Ecto.Multi) do
  defmodule Relaybox.Ecto do
    @moduledoc """
    Events written in your Ecto transactions: the outbox row commits with
    your rows or not at all.

        MyApp.Repo.transaction(fn ->
          order = MyApp.Repo.insert!(changeset)

          Relaybox.Ecto.enqueue!(MyApp.Repo, MyApp.Outbox, %{
            topic: "orders",
            key: "order-\#{order.id}",
            type: "OrderPlaced",
            payload: %{id: order.id, total: order.total}
          })

          order
        end)

    As a step of an `Ecto.Multi` (a failing later step leaves no event):

        Ecto.Multi.new()
        |> Ecto.Multi.insert(:order, changeset)
        |> Relaybox.Ecto.enqueue(:event, MyApp.Outbox, fn %{order: order} ->
          %{topic: "orders", key: "order-\#{order.id}", payload: %{id: order.id}}
        end)
        |> MyApp.Repo.transaction()

    `repo` is your Ecto repo on PostgreSQL (`Ecto.Adapters.Postgres`), and
    `outbox` a `Relaybox.Outbox` (or its registered name) on the same
    database: relaybox's relays and consumers use the outbox's own pool,
    while the INSERT runs on the repo's connection, in your transaction,
    followed by the `NOTIFY` that wakes the relays when it commits.

    Checks, each an `{:error, %Relaybox.Error{code: :invalid_config}}` with
    nothing written: `repo` is a started Ecto repo on PostgreSQL, the call
    is inside `repo.transaction/1`, and the repo reaches the outbox's
    database (the database's name and its server's start time, asked once
    per repo process and outbox). An invalid message is an
    `{:error, %Relaybox.Error{}}` (`:invalid_topic`, `:invalid_message`, ...)
    and writes nothing either; the transaction stays usable.

    Messages are maps (or keyword lists) as in `Relaybox.Spec`.
    """

    alias Relaybox.{Error, Native}
    alias Relaybox.Ecto.Host

    @typedoc "A message spec (see `Relaybox.Spec`)."
    @type message :: map() | keyword()

    @doc """
    Writes `message` to the outbox in the repo's current transaction;
    `{:ok, message_id}`.

    With an `Ecto.Multi` as first argument (`enqueue/4`), see `enqueue/4`.
    """
    @spec enqueue(module(), Relaybox.Outbox.outbox(), message()) ::
            {:ok, String.t()} | {:error, Error.t()}
    def enqueue(repo, outbox, message) do
      with {:ok, [id]} <- write(repo, outbox, [message], "Relaybox.Ecto.enqueue/3"), do: {:ok, id}
    end

    @doc "Like `enqueue/3`, returning the message id or raising `Relaybox.Error`."
    @spec enqueue!(module(), Relaybox.Outbox.outbox(), message()) :: String.t()
    def enqueue!(repo, outbox, message), do: repo |> enqueue(outbox, message) |> Native.unwrap!()

    @doc """
    Adds a step `name` to `multi` that writes a message in the Multi's
    transaction. `message_or_fun` is the message, or a function of the
    changes so far returning it. The step's value is the message id; an
    error fails the Multi (`{:error, name, %Relaybox.Error{}, changes}`), so
    nothing of it is committed.
    """
    @spec enqueue(
            Ecto.Multi.t(),
            Ecto.Multi.name(),
            Relaybox.Outbox.outbox(),
            message() | (map() -> message())
          ) :: Ecto.Multi.t()
    def enqueue(%Ecto.Multi{} = multi, name, outbox, message_or_fun) do
      Ecto.Multi.run(multi, name, fn repo, changes ->
        enqueue(repo, outbox, resolve(message_or_fun, changes))
      end)
    end

    @doc """
    Writes all of `messages` in the repo's current transaction, all or none
    (each is validated before anything is written); `{:ok, message_ids}` in
    order.
    """
    @spec enqueue_batch(module(), Relaybox.Outbox.outbox(), [message()]) ::
            {:ok, [String.t()]} | {:error, Error.t()}
    def enqueue_batch(repo, outbox, messages) when is_list(messages),
      do: write(repo, outbox, messages, "Relaybox.Ecto.enqueue_batch/3")

    @doc "Like `enqueue_batch/3`, returning the ids or raising `Relaybox.Error`."
    @spec enqueue_batch!(module(), Relaybox.Outbox.outbox(), [message()]) :: [String.t()]
    def enqueue_batch!(repo, outbox, messages),
      do: repo |> enqueue_batch(outbox, messages) |> Native.unwrap!()

    @doc """
    An `Ecto.Multi` step writing many messages (a list, or a function of the
    changes so far returning one); its value is the list of message ids.
    """
    @spec enqueue_batch(
            Ecto.Multi.t(),
            Ecto.Multi.name(),
            Relaybox.Outbox.outbox(),
            [message()] | (map() -> [message()])
          ) :: Ecto.Multi.t()
    def enqueue_batch(%Ecto.Multi{} = multi, name, outbox, messages_or_fun) do
      Ecto.Multi.run(multi, name, fn repo, changes ->
        case resolve(messages_or_fun, changes) do
          messages when is_list(messages) ->
            enqueue_batch(repo, outbox, messages)

          other ->
            {:error,
             Error.new(:invalid_message, "a batch is a list of messages, not #{inspect(other)}")}
        end
      end)
    end

    defp resolve(fun, changes) when is_function(fun, 1), do: fun.(changes)
    defp resolve(value, _changes), do: value

    defp write(repo, outbox, messages, integration),
      do: Host.write(repo, outbox, messages, integration)
  end
end
