defmodule Relaybox.EventodbKit.Migration do
  @moduledoc """
  Creates (`up(version: 1)`) and drops (`down(version: 1)`) relaybox's
  tables from an `Ecto.Migration`. It is `Relaybox.Migration` under the name
  of EventodbKit's `EventodbKit.Migration`.
  """

  @doc "See `Relaybox.Migration.up/1`."
  @spec up(keyword()) :: String.t() | :ok
  defdelegate up(opts \\ []), to: Relaybox.Migration

  @doc "See `Relaybox.Migration.down/1`."
  @spec down(keyword()) :: String.t() | :ok
  defdelegate down(opts \\ []), to: Relaybox.Migration
end
