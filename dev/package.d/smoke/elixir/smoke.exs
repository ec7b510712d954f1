# Enqueues one message on SQLite, relays it over the database transport and
# consumes it once; then rewinds the consumer, so that the transport
# delivers the message again, and checks that the inbox skips it. Prints
# `smoke: delivered=1 handled=1 startup_ms=<n>`, where startup_ms is the time
# from starting the relaybox application (the NIF is loaded on first use) to
# the first enqueue returning. Run with `mix run --no-start smoke.exs`.
Logger.configure(level: :warning)
started = System.monotonic_time(:microsecond)
{:ok, _} = Application.ensure_all_started(:relaybox)

dir = Path.join(System.tmp_dir!(), "relaybox-smoke-#{System.os_time()}")
File.mkdir_p!(dir)
outbox = Relaybox.Outbox.open!("sqlite://#{dir}/smoke.db?mode=rwc", migrate: true)

{:ok, id} =
  Relaybox.Outbox.enqueue(outbox, %{
    topic: "smoke",
    key: "k-1",
    type: "SmokeTested",
    payload: %{n: 1}
  })

startup_ms = (System.monotonic_time(:microsecond) - started) / 1000

defmodule Smoke.Handler do
  @moduledoc "Records each message in `smoke_handled`, in the inbox's transaction."
  use Relaybox.Consumer

  @impl Relaybox.Consumer
  def init(opts) do
    {:ok,
     %{
       outbox: opts[:outbox],
       topic: "smoke",
       consumer_id: "smoke",
       poll_interval: 50,
       notify: opts[:notify]
     }}
  end

  @impl Relaybox.Consumer
  def handle_message(message, state) do
    Relaybox.Tx.execute!(message["tx"], "INSERT INTO smoke_handled (id) VALUES (?)", [
      message["id"]
    ])

    send(state.notify, {:handled, message["id"]})
    :ok
  end
end

defmodule Smoke do
  @moduledoc "Polling with a deadline, and plain SQL."
  def eventually(what, check, deadline \\ System.monotonic_time(:millisecond) + 30_000) do
    cond do
      check.() ->
        :ok

      System.monotonic_time(:millisecond) > deadline ->
        raise "smoke: timed out waiting for #{what}"

      true ->
        Process.sleep(20) && eventually(what, check, deadline)
    end
  end

  def sql!(outbox, sql) do
    Relaybox.Outbox.transaction!(outbox, &Relaybox.Tx.query!(&1, sql, []))
  end
end

Relaybox.Outbox.transaction!(outbox, fn tx ->
  Relaybox.Tx.execute!(tx, "CREATE TABLE smoke_handled (id TEXT PRIMARY KEY)")
end)

{:ok, relay} = Relaybox.Relay.start_link(outbox: outbox, poll_interval: 50)
{:ok, consumer} = Relaybox.Consumer.start_link(Smoke.Handler, outbox: outbox, notify: self())

receive do
  {:handled, ^id} -> :ok
after
  30_000 -> raise "smoke: the message was not handled"
end

Smoke.eventually("the relay's count", fn ->
  match?({:ok, %{delivered: n}} when n > 0, Relaybox.Relay.stats(relay))
end)

{:ok, %{delivered: delivered}} = Relaybox.Relay.stats(relay)

Smoke.eventually("the consumer's position", fn ->
  Smoke.sql!(outbox, "SELECT 1 FROM relaybox_positions") != []
end)

:ok = Relaybox.Consumer.stop(consumer)

# Delivered again from the start: the inbox skips the message.
Smoke.sql!(outbox, "UPDATE relaybox_positions SET position = 0")
{:ok, consumer} = Relaybox.Consumer.start_link(Smoke.Handler, outbox: outbox, notify: self())

Smoke.eventually("the duplicate skipped", fn ->
  match?({:ok, %{duplicates: 1}}, Relaybox.Consumer.stats(consumer))
end)

[%{"n" => handled}] = Smoke.sql!(outbox, "SELECT COUNT(*) AS n FROM smoke_handled")

receive do
  {:handled, again} -> raise "smoke: #{again} was handled twice"
after
  0 -> :ok
end

unless delivered == 1 and handled == 1,
  do: raise("smoke: delivered=#{delivered} handled=#{handled}, expected 1 and 1")

:ok = Relaybox.Consumer.stop(consumer)
:ok = Relaybox.Relay.stop(relay)
File.rm_rf!(dir)

IO.puts(
  "smoke: delivered=#{delivered} handled=#{handled} startup_ms=#{Float.round(startup_ms, 1)}"
)
