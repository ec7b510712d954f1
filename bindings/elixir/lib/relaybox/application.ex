defmodule Relaybox.Application do
  @moduledoc false
  # Starts `Relaybox.LogForwarder`, which hands the core's log records to `Logger`.
  use Application

  @impl Application
  def start(_type, _args) do
    Supervisor.start_link([Relaybox.LogForwarder],
      strategy: :one_for_one,
      name: Relaybox.Supervisor
    )
  end
end
