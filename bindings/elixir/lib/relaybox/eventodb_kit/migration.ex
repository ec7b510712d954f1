defmodule Relaybox.EventodbKit.Migration do
  @moduledoc """
  EventodbKit's `EventodbKit.Migration`: `Relaybox.Migration` under the
  façade's name, for `up(version: 1)` / `down(version: 1)` in an
  `Ecto.Migration`.
  """

  @doc "See `Relaybox.Migration.up/1`."
  @spec up(keyword()) :: String.t() | :ok
  defdelegate up(opts \\ []), to: Relaybox.Migration

  @doc "See `Relaybox.Migration.down/1`."
  @spec down(keyword()) :: String.t() | :ok
  defdelegate down(opts \\ []), to: Relaybox.Migration
end
