defmodule Relaybox.EventodbKit do
  @moduledoc """
  Events for an EventoDB server, written in your `Repo.transaction/1` so
  that they are sent only if your rows commit, and reads of the server's
  streams and categories. `stream_write/4` writes an event to the outbox on
  your repo's database, `Relaybox.EventodbKit.OutboxSender` sends it to the
  server in the background, `Relaybox.EventodbKit.Consumer` handles each
  event of a category once, and `stream_get/3`, `stream_last/3`,
  `stream_version/2` and `category_get/3` ask the server. The API is
  EventodbKit's: programs written for EventodbKit run with `EventodbKit`
  renamed to `Relaybox.EventodbKit`.

      kit = Relaybox.EventodbKit.Client.new("http://localhost:8080",
        token: System.get_env("ANALYTICS_TOKEN"), repo: MyApp.Repo)

      MyApp.Repo.transaction(fn ->
        lead = MyApp.Repo.insert!(%Lead{email: "test@example.com"})

        {:ok, _outbox_id, _kit} =
          Relaybox.EventodbKit.stream_write(kit, "partnership-\#{lead.id}",
            %{type: "LeadCreated", data: %{lead_id: lead.id}})

        lead
      end)

      {:ok, messages, kit} = Relaybox.EventodbKit.stream_get(kit, "partnership-42")

  ## Writes

  `stream_write/4` writes the event to relaybox's outbox on the repo's
  database, in the repo's transaction when one is open (so it commits with
  your rows or not at all) and in a transaction of its own otherwise. The
  stream `"<category>-<id>"` becomes the topic `category` and the key `id`;
  the sender writes it to that stream with `stream.write`, in order per
  stream, under the message's id, so a re-sent message is stored once.
  `data` must be a map (EventoDB stores JSON objects); `metadata` entries
  become relaybox headers (string values; other values as their JSON
  text). The option `expected_version:` is sent as `expectedVersion`.

  The outbox is the one `Relaybox.Migration.up(version: 1)` created on the
  repo's database (tables prefixed `relaybox_`; `prefix:` in
  `Relaybox.EventodbKit.Client.new/2` picks another set), opened once per
  repo from `repo.config/0`; `outbox:` names a `Relaybox.Outbox` instead.

  ## Reads

  `stream_get/3`, `stream_last/3`, `stream_version/2` and `category_get/3`
  ask the server (`POST <base_url>/rpc`), so they see what the sender has
  shipped. Messages are maps with string keys: `"id"`, `"stream_name"`,
  `"type"`, `"position"`, `"global_position"`, `"data"`, `"metadata"`,
  `"time"`. Options are maps or keyword lists: `:position`,
  `:global_position`, `:batch_size` (stream and category reads), `:type`
  (`stream_last/3`), `:correlation` and `:consumer_group`
  (`%{member: m, size: n}`, `category_get/3`); the server's camelCase names
  are accepted too.

  Every function returns `{:ok, value, kit}` or `{:error, %Relaybox.Error{}}`:
  bad input is `:invalid_message` / `:invalid_config` with nothing written,
  a token the server refuses `:invalid_config`, other server answers
  `:transport` (with the server's code in the message). The token never
  appears in errors or in `inspect/1` of the client.
  """

  alias Relaybox.{Error, Native, Outbox}
  alias Relaybox.EventodbKit.Client
  alias Relaybox.Ecto.Host

  @integration "Relaybox.EventodbKit.stream_write/4"

  @doc """
  Writes `message` (`%{type: ..., data: %{...}, metadata: %{...}}`) to
  `stream` through the outbox; `{:ok, outbox_id, kit}`, where `outbox_id`
  is the message's id (the id EventoDB stores it under). Options:
  `:expected_version` (an integer), `:id` (a UUID).
  """
  @spec stream_write(Client.t(), String.t(), map(), keyword() | map()) ::
          {:ok, String.t(), Client.t()} | {:error, Error.t()}
  def stream_write(%Client{} = kit, stream, message, opts \\ []) do
    with {:ok, spec} <- spec(stream, message, Map.new(opts)),
         :ok <- Host.check_repo(kit.repo, @integration),
         {:ok, outbox} <- outbox(kit),
         {:ok, [id]} <- write(kit.repo, outbox, spec) do
      {:ok, id, kit}
    end
  end

  @doc false
  @spec outbox(Client.t()) :: {:ok, Outbox.t()} | {:error, Error.t()}
  def outbox(%Client{outbox: nil, repo: repo, prefix: prefix}),
    do: Host.outbox_for(repo, prefix: prefix)

  def outbox(%Client{outbox: outbox}), do: Outbox.resolve(outbox)

  # A message with an idempotency key is written by relaybox's own
  # transaction, which settles the key; inside the Repo's transaction the core
  # refuses the key (`:invalid_message`), since a statement run by Postgrex
  # cannot return the first message's id.
  defp write(repo, outbox, %{idempotency_key: _} = spec) do
    if repo.in_transaction?() do
      Host.write(repo, outbox, [spec], @integration)
    else
      with {:ok, id} <- Outbox.enqueue(outbox, spec), do: {:ok, [id]}
    end
  end

  defp write(repo, outbox, spec) do
    if repo.in_transaction?() do
      Host.write(repo, outbox, [spec], @integration)
    else
      repo.transaction(fn ->
        case Host.write(repo, outbox, [spec], @integration) do
          {:ok, ids} -> ids
          {:error, error} -> repo.rollback(error)
        end
      end)
    end
  end

  defp spec(stream, message, opts) do
    with {:ok, category, id} <- split_stream(stream),
         message = Map.new(message, fn {k, v} -> {to_string(k), v} end),
         {:ok, type} <- type(message["type"]),
         {:ok, data} <- data(message["data"]),
         {:ok, headers} <- headers(message["metadata"] || %{}),
         {:ok, headers} <- expected_version(headers, opts) do
      spec = %{topic: category, key: id, type: type, payload: data, headers: headers}
      spec = if opts[:id], do: Map.put(spec, :id, opts[:id]), else: spec

      {:ok,
       case data["idempotency_key"] || data[:idempotency_key] do
         nil -> spec
         key -> Map.put(spec, :idempotency_key, to_string(key))
       end}
    end
  end

  defp split_stream(stream) when is_binary(stream) do
    case String.split(stream, "-", parts: 2) do
      [category, id] when category != "" and id != "" ->
        {:ok, category, id}

      _ ->
        invalid(
          "stream #{inspect(stream)} is not \"<category>-<id>\": the outbox writes to the " <>
            "stream of an entity"
        )
    end
  end

  defp split_stream(stream), do: invalid("stream must be a string, not #{inspect(stream)}")

  defp type(type) when is_binary(type) and type != "", do: {:ok, type}

  defp type(type),
    do: invalid("the message needs a type (a non-empty string), not #{inspect(type)}")

  defp data(data) when is_map(data) and not is_struct(data), do: {:ok, data}

  defp data(data),
    do: invalid("data must be a map (EventoDB stores JSON objects), not #{inspect(data)}")

  defp headers(metadata) when is_map(metadata) do
    Enum.reduce_while(metadata, {:ok, %{}}, fn {name, value}, {:ok, acc} ->
      case header_value(value) do
        nil -> {:cont, {:ok, acc}}
        {:ok, text} -> {:cont, {:ok, Map.put(acc, to_string(name), text)}}
        {:error, _} = error -> {:halt, error}
      end
    end)
  end

  defp headers(other), do: invalid("metadata must be a map, not #{inspect(other)}")

  defp header_value(nil), do: nil
  defp header_value(text) when is_binary(text), do: {:ok, text}

  defp header_value(value) when is_number(value) or is_boolean(value) or is_atom(value),
    do: {:ok, to_string(value)}

  defp header_value(value), do: Native.json_encode(value)

  defp expected_version(headers, opts) do
    case opts[:expected_version] || opts[:expectedVersion] do
      nil ->
        {:ok, headers}

      v when is_integer(v) and v >= -1 ->
        {:ok, Map.put(headers, "expected_version", Integer.to_string(v))}

      v ->
        invalid("expected_version must be an integer >= -1, not #{inspect(v)}")
    end
  end

  defp invalid(message), do: {:error, Error.new(:invalid_message, message)}

  @doc """
  The messages of `stream` from `:position` (default 0), up to
  `:batch_size` (the server's default 1000); `{:ok, messages, kit}`.
  """
  @spec stream_get(Client.t(), String.t(), map() | keyword()) ::
          {:ok, [map()], Client.t()} | {:error, Error.t()}
  def stream_get(%Client{} = kit, stream, opts \\ %{}) do
    with {:ok, rows} <- Client.rpc(kit, "stream.get", [stream, options(opts)]),
         {:ok, messages} <- rows(rows, &stream_message(stream, &1)) do
      {:ok, messages, kit}
    end
  end

  @doc "The last message of `stream` (of type `:type` if given), or `nil`; `{:ok, message, kit}`."
  @spec stream_last(Client.t(), String.t(), map() | keyword()) ::
          {:ok, map() | nil, Client.t()} | {:error, Error.t()}
  def stream_last(%Client{} = kit, stream, opts \\ %{}) do
    case Client.rpc(kit, "stream.last", [stream, options(opts)]) do
      {:ok, nil} -> {:ok, nil, kit}
      {:ok, row} -> with {:ok, m} <- stream_message(stream, row), do: {:ok, m, kit}
      {:error, _} = error -> error
    end
  end

  @doc "The version of `stream` (its last position, 0-based), or `nil` when it has no message."
  @spec stream_version(Client.t(), String.t()) ::
          {:ok, integer() | nil, Client.t()} | {:error, Error.t()}
  def stream_version(%Client{} = kit, stream) do
    case Client.rpc(kit, "stream.version", [stream]) do
      {:ok, version} when is_integer(version) or is_nil(version) -> {:ok, version, kit}
      {:ok, other} -> bad_answer("stream.version", other)
      {:error, _} = error -> error
    end
  end

  @doc """
  The messages of every stream of `category` from global `:position`, up to
  `:batch_size`, optionally of one `:consumer_group` member or
  `:correlation`; `{:ok, messages, kit}`.
  """
  @spec category_get(Client.t(), String.t(), map() | keyword()) ::
          {:ok, [map()], Client.t()} | {:error, Error.t()}
  def category_get(%Client{} = kit, category, opts \\ %{}) do
    with {:ok, rows} <- Client.rpc(kit, "category.get", [category, options(opts)]),
         {:ok, messages} <- rows(rows, &category_message/1) do
      {:ok, messages, kit}
    end
  end

  @camel %{
    "global_position" => "globalPosition",
    "batch_size" => "batchSize",
    "consumer_group" => "consumerGroup",
    "expected_version" => "expectedVersion"
  }

  defp options(opts) do
    Map.new(opts, fn {k, v} ->
      k = to_string(k)
      v = if is_list(v) and v != [] and Keyword.keyword?(v), do: Map.new(v), else: v
      {Map.get(@camel, k, k), v}
    end)
  end

  defp rows(rows, fun) when is_list(rows) do
    Enum.reduce_while(rows, {:ok, []}, fn row, {:ok, acc} ->
      case fun.(row) do
        {:ok, m} -> {:cont, {:ok, [m | acc]}}
        error -> {:halt, error}
      end
    end)
    |> case do
      {:ok, acc} -> {:ok, Enum.reverse(acc)}
      error -> error
    end
  end

  defp rows(other, _fun), do: bad_answer("read", other)

  defp stream_message(stream, [id, type, position, global, data, metadata, time]) do
    {:ok, message(id, stream, type, position, global, data, metadata, time)}
  end

  defp stream_message(_stream, other), do: bad_answer("stream read", other)

  defp category_message([id, stream, type, position, global, data, metadata, time]) do
    {:ok, message(id, stream, type, position, global, data, metadata, time)}
  end

  defp category_message(other), do: bad_answer("category.get", other)

  defp message(id, stream, type, position, global, data, metadata, time) do
    %{
      "id" => id,
      "stream_name" => stream,
      "type" => type,
      "position" => position,
      "global_position" => global,
      "data" => data,
      "metadata" => metadata,
      "time" => time
    }
  end

  defp bad_answer(method, answer) do
    {:error,
     Error.new(:transport, "eventodb #{method}: unexpected answer #{inspect(answer, limit: 20)}")}
  end
end
