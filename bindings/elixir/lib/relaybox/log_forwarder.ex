defmodule Relaybox.LogForwarder do
  @moduledoc """
  Hands the log records of the relaybox core (relays, consumers, their
  broker clients) to `Logger`. It is started by the `:relaybox` application;
  nothing needs to be added to your supervision tree.

  Each record is logged with its level (`trace` becomes `:debug`) and its
  message followed by its fields (`relaybox message dead-lettered by
  consumer id=... group=... attempts=1 error=...`), and with metadata:

    * each field of the record under its own key (`:id`, `:group`,
      `:attempts`, `:error`, ...), except where the key is one `Logger`
      itself sets (`:file`, `:line`, `:pid`, ...);
    * `:relaybox_fields`: all the fields as a map;
    * `:relaybox_target`: the core's module (`"relaybox::consumer"`) or, for
      a record of one of its libraries, that library (`"librdkafka"`);
    * `:relaybox_thread`, `:file`, `:line`, and `:domain` `[:relaybox]`
      (in `Logger` as `[:elixir, :relaybox]`).

  ## Level

  Records at `config :relaybox, log_level: level` (default `:info`) and
  above are forwarded, and never more verbose than `Logger.level/0` at
  start; the core's libraries only at `:warning` and above. `:none` turns
  forwarding off. `set_level/1` changes it at runtime.

  ## Never blocking

  The core never waits for this process: records travel through a bounded
  queue (4096 records) to a native thread that sends them here in batches,
  at most 8 batches ahead of this process. When `Logger` does not keep up,
  further records are dropped and counted, and a warning record
  `relaybox log records dropped` with field `dropped` follows.
  """
  use GenServer

  require Logger

  alias Relaybox.Native

  # Keys `Logger` and `:logger` set themselves: fields of these names are
  # kept only in `:relaybox_fields`.
  @reserved ~w(application module function file line pid crash_reason initial_call registered_name domain gl time mfa report_cb)a

  @doc false
  def start_link(opts), do: GenServer.start_link(__MODULE__, opts, name: __MODULE__)

  @doc false
  def child_spec(opts) do
    %{id: __MODULE__, start: {__MODULE__, :start_link, [opts]}, type: :worker}
  end

  @doc """
  Sets the most verbose level forwarded: `:error`, `:warning`, `:info`,
  `:debug`, `:trace` (the `Logger` levels `:emergency` ... `:notice` are
  accepted too), or `:none`.
  """
  @spec set_level(atom()) :: :ok | {:error, String.t()}
  def set_level(level), do: Native.log_forward_set_level(level_name(level))

  @doc """
  Counters of the forwarding: `%{"queued" => n, "dropped" => n}`, records
  queued for `Logger` and records dropped because it did not keep up, since
  the application started.
  """
  @spec stats() :: %{String.t() => non_neg_integer()}
  def stats, do: Native.log_forward_stats()

  @impl GenServer
  def init(opts) do
    Process.flag(:trap_exit, true)
    configured = Keyword.get(opts, :level, Application.get_env(:relaybox, :log_level, :info))

    case Native.log_forward_start(level_name(least_verbose(configured, Logger.level()))) do
      :ok ->
        {:ok, %{}}

      {:error, reason} ->
        Logger.info("relaybox: core logs are not forwarded to Logger (#{reason})",
          domain: [:relaybox]
        )

        :ignore
    end
  end

  @impl GenServer
  def handle_info({:relaybox_log, records}, state) do
    Enum.each(records, &emit/1)
    Native.log_forward_ack()
    {:noreply, state}
  end

  def handle_info(_other, state), do: {:noreply, state}

  @impl GenServer
  def terminate(_reason, _state) do
    Native.log_forward_stop()
  end

  defp emit(record) do
    fields = Map.reject(record.fields, fn {key, _} -> key in @reserved end)

    metadata =
      [
        domain: [:relaybox],
        relaybox_target: record.target,
        relaybox_fields: record.fields,
        relaybox_thread: record.thread,
        file: record.file,
        line: record.line
      ] ++ Map.to_list(fields)

    Logger.bare_log(record.level, record.text, metadata)
  end

  @levels ~w(off error warning info debug trace)

  defp least_verbose(a, b) do
    [a, b] |> Enum.map(&level_name/1) |> Enum.min_by(&rank/1)
  end

  defp rank(name), do: Enum.find_index(@levels, &(&1 == name)) || 0

  defp level_name(level) when level in [:emergency, :alert, :critical, :error], do: "error"
  defp level_name(level) when level in [:warning, :warn], do: "warning"
  defp level_name(level) when level in [:notice, :info], do: "info"
  defp level_name(:debug), do: "debug"
  defp level_name(level) when level in [:trace, :all], do: "trace"
  defp level_name(level) when level in [:none, :off, false, nil], do: "off"
  defp level_name(level), do: to_string(level)
end
