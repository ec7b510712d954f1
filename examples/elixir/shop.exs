# A shop in one script: a WokAsyncMessageHandler-style producer writes a
# versioned "user created" event in the same transaction as the user row, a
# relay delivers it, and an EventodbKit-style consumer validates it through an
# event registry and records it once.
#
#   cd bindings/elixir && mix run ../../examples/elixir/shop.exs
#
# Uses RELAYBOX_EXAMPLE_URL when set (e.g. a PostgreSQL URL), else a SQLite
# file in the temporary directory.

defmodule Shop.User do
  @moduledoc "The application's user record."
  defstruct [:id, :email]
end

defmodule Shop.MessageSerializers.User do
  @moduledoc "How a user becomes a message (see Relaybox.Producer)."
  def message_versions, do: [1]
  def created(user, 1), do: %{user_id: user.id, email: user.email}
  def updated(user, v), do: created(user, v)
  def destroyed(user, _v), do: %{user_id: user.id}
  def partition_key(user), do: user.id
  def message_route(event), do: "shop/user/#{event}"
end

defmodule Shop.Producer do
  @moduledoc "The producer: its outbox is registered as Shop.Outbox."
  @producer_name "shop"
  @realtime_topic "shop-realtime"
  @datastore Shop.Outbox
  @serializers Shop.MessageSerializers
  use Relaybox.Producer
end

defmodule Shop.Events.UserCreated do
  @moduledoc "The event as consumers see it."
  @enforce_keys [:user_id, :email]
  defstruct [:user_id, :email]
end

defmodule Shop.Events do
  @moduledoc "Event registry: route name to struct."
  use Relaybox.EventDispatcher
  register "shop/user/created", Shop.Events.UserCreated
end

defmodule Shop.Welcome do
  @moduledoc "Sends a welcome mail once per user (here: records it and tells the script)."
  use Relaybox.Consumer

  @impl Relaybox.Consumer
  def init(opts) do
    {:ok,
     %{
       outbox: Shop.Outbox,
       category: "users",
       consumer_id: "welcome",
       poll_interval: 100,
       notify: opts[:notify]
     }}
  end

  @impl Relaybox.Consumer
  def handle_message(message, state) do
    # The body is versioned: take the payload of version 1.
    [%{"version" => 1, "payload" => data} | _] = message["data"]

    Shop.Events.dispatch(message["type"], data, fn Shop.Events.UserCreated, event ->
      Relaybox.Tx.execute!(
        message["tx"],
        "INSERT INTO shop_welcomes (user_id, email) VALUES ($1, $2)",
        [
          event.user_id,
          event.email
        ]
      )

      send(state.notify, {:welcomed, event.email})
      :ok
    end)
  end
end

# Without RELAYBOX_EXAMPLE_URL: a new SQLite file, removed first in case an
# earlier run left one under the same name.
url =
  System.get_env("RELAYBOX_EXAMPLE_URL") ||
    (
      path = Path.join(System.tmp_dir!(), "relaybox-shop-#{System.pid()}.db")
      File.rm(path)
      "sqlite://#{path}?mode=rwc"
    )

{:ok, _} =
  Supervisor.start_link(
    [
      {Relaybox.Outbox, url: url, name: Shop.Outbox, migrate: true},
      {Relaybox.Relay, outbox: Shop.Outbox, poll_interval: 100},
      {Shop.Welcome, notify: self()}
    ],
    strategy: :one_for_one
  )

Relaybox.Outbox.transaction!(Shop.Outbox, fn tx ->
  Relaybox.Tx.execute!(
    tx,
    "CREATE TABLE IF NOT EXISTS shop_users (id BIGINT PRIMARY KEY, email TEXT)"
  )

  Relaybox.Tx.execute!(
    tx,
    "CREATE TABLE IF NOT EXISTS shop_welcomes (user_id BIGINT PRIMARY KEY, email TEXT)"
  )
end)

user = struct(Shop.User, id: System.unique_integer([:positive]), email: "ada@example.com")

{:ok, message} =
  Relaybox.Outbox.transaction!(Shop.Outbox, fn tx ->
    Relaybox.Tx.execute!(tx, "INSERT INTO shop_users (id, email) VALUES ($1, $2)", [
      user.id,
      user.email
    ])

    Shop.Producer.create_and_add_message_to_message_queue(tx, user, :created, "users")
  end)

IO.puts("enqueued #{message["type"]} #{message["id"]} with key #{message["key"]}")

receive do
  {:welcomed, email} -> IO.puts("welcomed #{email} exactly once")
after
  15_000 -> raise "the welcome consumer did not get the event"
end
