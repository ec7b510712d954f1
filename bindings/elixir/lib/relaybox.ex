defmodule Relaybox do
  @moduledoc """
  Reliable event delivery for Elixir: a transactional outbox, a relay and an
  idempotent consumer, run by the relaybox Rust core through a NIF.

    * `Relaybox.Ecto` writes events in your `Repo.transaction/1` or
      `Ecto.Multi` (when your application uses Ecto and Postgrex).
    * `Relaybox.Outbox` opens a store; `Relaybox.Outbox.transaction/2` runs your
      writes (`Relaybox.Tx.query/3`) and enqueues (`Relaybox.Tx.enqueue/2`) in one
      database transaction.
    * `Relaybox.Relay` is a supervised child that moves committed outbox rows
      to a broker (Kafka, or the database's own log).
    * `use Relaybox.Consumer` handles each message once, in the same transaction
      as the inbox row that deduplicates it (with `repo:`, a transaction of
      your Ecto repo).
    * `use Relaybox.Producer`, `Relaybox.EventodbKit`, `use Relaybox.EventDispatcher`
      and `Relaybox.Migration` keep the APIs of WokAsyncMessageHandler and EventodbKit.
    * `Relaybox.Telemetry` lists the `:telemetry` events.

  Every call that touches the database or a broker runs on the core's own
  threads, never on a BEAM scheduler; results come back as
  `{:ok, value} | {:error, %Relaybox.Error{}}`, and every function has a `!`
  variant that raises instead.
  """

  @doc "The version of the relaybox core this package was built with."
  @spec version() :: String.t()
  def version, do: Relaybox.Native.version()
end
