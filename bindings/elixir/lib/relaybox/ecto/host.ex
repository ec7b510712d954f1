defmodule Relaybox.Ecto.Host do
  @moduledoc false
  # Checks shared by `Relaybox.Ecto` and `Relaybox.Consumer` with `repo:`:
  # the repo is a started Ecto repo on PostgreSQL, and it reaches the
  # outbox's database. Every call on the repo is made through the module the
  # caller gives, so this module compiles without Ecto.

  alias Relaybox.{Error, Native, Outbox, Spec, Tx}

  # A database is its name and its server's start time: the same name on
  # another server (or a restarted one, whose connections are new) differs.
  @identity_sql "SELECT current_database() AS database, " <>
                  "CAST(CAST(EXTRACT(EPOCH FROM pg_postmaster_start_time()) * 1000000 AS bigint) AS text) AS started"

  @doc false
  @spec check(module(), Outbox.outbox(), String.t()) :: {:ok, Outbox.t()} | {:error, Error.t()}
  def check(repo, outbox, integration) do
    with :ok <- check_repo(repo, integration),
         {:ok, outbox} <- Outbox.resolve(outbox),
         :ok <- check_dialect(outbox, integration),
         :ok <- same_database(repo, outbox, integration, true) do
      {:ok, outbox}
    end
  end

  # The identities are cached; when they differ, they are asked again once
  # (a server restarted since they were cached has another start time).
  defp same_database(repo, outbox, integration, cached?) do
    with {:ok, repo_identity} <- repo_identity(repo, cached?),
         {:ok, outbox_identity} <- outbox_identity(outbox, cached?) do
      cond do
        repo_identity == outbox_identity ->
          :ok

        cached? ->
          same_database(repo, outbox, integration, false)

        true ->
          {:error,
           Error.new(
             :invalid_config,
             "#{integration}: #{inspect(repo)} is connected to database " <>
               "#{inspect(elem(repo_identity, 0))}, not to the outbox's database " <>
               "#{inspect(elem(outbox_identity, 0))} (or to another server): the event " <>
               "would not commit with your rows. Use a repo of the outbox's database."
           )}
      end
    end
  end

  @doc false
  @spec check_repo(term(), String.t()) :: :ok | {:error, Error.t()}
  def check_repo(repo, integration) do
    cond do
      not (is_atom(repo) and Code.ensure_loaded?(repo) and
               function_exported?(repo, :__adapter__, 0)) ->
        {:error,
         Error.new(:invalid_config, "#{integration}: #{inspect(repo)} is not an Ecto repo")}

      repo.__adapter__() != Ecto.Adapters.Postgres ->
        {:error,
         Error.new(
           :invalid_config,
           "#{integration}: #{inspect(repo)} uses #{inspect(repo.__adapter__())}; " <>
             "relaybox's outbox is written through Ecto.Adapters.Postgres"
         )}

      GenServer.whereis(repo.get_dynamic_repo()) == nil ->
        {:error,
         Error.new(
           :invalid_config,
           "#{integration}: the repo #{inspect(repo)} is not started " <>
             "(start it in your supervision tree before using it with relaybox)"
         )}

      true ->
        :ok
    end
  end

  defp check_dialect(outbox, integration) do
    case Outbox.info(outbox) do
      {:ok, %{dialect: :postgres}} ->
        :ok

      {:ok, %{dialect: dialect}} ->
        {:error,
         Error.new(
           :invalid_config,
           "#{integration} writes into a PostgreSQL outbox; this outbox is on #{dialect}"
         )}

      {:error, _} = error ->
        error
    end
  end

  # Cached per started repo process (a restarted repo is asked again).
  defp repo_identity(repo, cached?) do
    key = {__MODULE__, :repo, repo, GenServer.whereis(repo.get_dynamic_repo())}

    cached(key, cached?, fn ->
      case repo.query(@identity_sql, []) do
        {:ok, %{rows: [[database, started]]}} -> {:ok, {database, started}}
        {:error, error} -> {:error, database_error(error)}
      end
    end)
  end

  # Cached per outbox URL (without its password).
  defp outbox_identity(%Outbox{url: url} = outbox, cached?) do
    cached({__MODULE__, :outbox, url}, cached?, fn ->
      case Outbox.transaction(outbox, &Tx.query(&1, @identity_sql)) do
        {:ok, {:ok, [%{"database" => database, "started" => started}]}} ->
          {:ok, {database, started}}

        {:ok, {:error, error}} ->
          {:error, error}

        {:error, _} = error ->
          error
      end
    end)
  end

  defp cached(key, cached?, fun) do
    case cached? && :persistent_term.get(key, nil) do
      falsy when falsy in [nil, false] ->
        with {:ok, identity} <- fun.() do
          :persistent_term.put(key, identity)
          {:ok, identity}
        end

      identity ->
        {:ok, identity}
    end
  end

  @doc false
  # The outbox on `repo`'s database (tables `<prefix>...`, default
  # `relaybox_`), opened once per repo and prefix from the repo's settings
  # (`repo.config/0`: `:url`, or `:hostname`, `:port`, `:username`,
  # `:password`, `:database`); it is the pool relays and consumers use.
  @spec outbox_for(module(), map() | keyword()) :: {:ok, Outbox.t()} | {:error, Error.t()}
  def outbox_for(repo, opts \\ []) do
    prefix = opts[:prefix] || "relaybox_"
    key = {__MODULE__, :outbox_for, repo, prefix}

    case :persistent_term.get(key, nil) do
      %Outbox{} = outbox ->
        {:ok, outbox}

      nil ->
        :global.trans({key, self()}, fn ->
          with nil <- :persistent_term.get(key, nil),
               :ok <- check_repo(repo, "the outbox of #{inspect(repo)}"),
               {:ok, url} <- repo_url(repo),
               {:ok, outbox} <- Outbox.open(url, table_prefix: prefix) do
            :persistent_term.put(key, outbox)
            {:ok, outbox}
          else
            %Outbox{} = outbox -> {:ok, outbox}
            {:error, _} = error -> error
          end
        end)
    end
  end

  defp repo_url(repo) do
    config = repo.config()

    case config[:url] do
      url when is_binary(url) and url != "" ->
        {:ok, url}

      _ ->
        with database when is_binary(database) <- config[:database] do
          user = config[:username] || System.get_env("USER") || "postgres"
          password = config[:password]
          host = config[:hostname] || "localhost"
          port = config[:port] || 5432
          auth = if password, do: "#{enc(user)}:#{enc(password)}", else: enc(user)
          {:ok, "postgres://#{auth}@#{host}:#{port}/#{enc(database)}"}
        else
          _ ->
            {:error,
             Error.new(
               :invalid_config,
               "#{inspect(repo)}.config() has neither :url nor :database; give the " <>
                 "outbox explicitly (outbox: MyApp.Outbox)"
             )}
        end
    end
  end

  defp enc(text), do: URI.encode(to_string(text), &URI.char_unreserved?/1)

  @doc false
  # Writes `messages` through `repo` in its current transaction: the core's
  # INSERTs, then their wake-ups; `{:ok, ids}`.
  @spec write(module(), Outbox.outbox(), [map() | keyword()], String.t()) ::
          {:ok, [String.t()]} | {:error, Error.t()}
  def write(repo, outbox, messages, integration) do
    Relaybox.Telemetry.enqueue(messages, repo, fn ->
      with {:ok, outbox} <- check(repo, outbox, integration),
           :ok <- in_transaction(repo, integration),
           {:ok, statements} <- statements(outbox, messages) do
        run(repo, statements)
      end
    end)
  end

  defp in_transaction(repo, integration) do
    if repo.in_transaction?() do
      :ok
    else
      {:error,
       Error.new(
         :invalid_config,
         "#{integration} writes in the caller's transaction: call it inside " <>
           "#{inspect(repo)}.transaction/1 (or as an Ecto.Multi step)"
       )}
    end
  end

  defp statements(outbox, messages) do
    specs = Enum.map(messages, &Spec.message/1)
    Native.call(&Native.outbox_insert_batch_sql(outbox.ref, specs, "dollar", &1))
  end

  defp run(repo, statements) do
    result =
      Enum.reduce_while(statements, {:ok, [], []}, fn {sql, params, ids, wake},
                                                      {:ok, acc, wakes} ->
        case repo.query(sql, params) do
          {:ok, _} -> {:cont, {:ok, [ids | acc], [wake | wakes]}}
          {:error, error} -> {:halt, {:error, database_error(error)}}
        end
      end)

    with {:ok, ids, wakes} <- result,
         :ok <- wake(repo, wakes |> Enum.reject(&is_nil/1) |> Enum.uniq()) do
      {:ok, ids |> Enum.reverse() |> Enum.concat()}
    end
  end

  defp wake(repo, statements) do
    Enum.reduce_while(statements, :ok, fn sql, :ok ->
      case repo.query(sql, []) do
        {:ok, _} -> {:cont, :ok}
        {:error, error} -> {:halt, {:error, database_error(error)}}
      end
    end)
  end

  @doc false
  @spec database_error(term()) :: Error.t()
  def database_error(%{__exception__: true} = e),
    do: %Error{code: :database, message: Exception.message(e)}

  def database_error(other),
    do: %Error{code: :database, message: inspect(other)}
end
