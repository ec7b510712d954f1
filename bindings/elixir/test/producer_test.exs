defmodule Relaybox.ProducerTest do
  use Relaybox.Case, async: true

  defmodule User do
    @moduledoc "A schema-like struct."
    defstruct [:id, :first, :last, :inserted_at]
  end

  defmodule Serializers.User do
    @moduledoc "Serializer of User with two message versions."
    def message_versions, do: [1, 2]
    def created(u, 1), do: %{id: u.id, name: "#{u.first} #{u.last}", inserted_at: u.inserted_at}
    def created(u, 2), do: %{id: u.id, first_name: u.first, last_name: u.last}
    def updated(u, v), do: created(u, v)
    def destroyed(u, _version), do: %{id: u.id}
    def partition_key(u), do: u.id
    def message_route(event), do: "shop/user/#{event}"
  end

  defmodule Producer do
    @moduledoc "The producer under test; its outbox is registered per test."
    @producer_name "shop"
    @realtime_topic "realtime"
    @datastore :relaybox_producer_test_outbox
    @serializers Relaybox.ProducerTest.Serializers
    use Relaybox.Producer
  end

  setup %{prefix: prefix} do
    start_supervised!(
      {Outbox, url: db_url!(), name: :relaybox_producer_test_outbox, table_prefix: prefix}
    )

    :ok
  end

  defp stored(outbox) do
    sql!(
      outbox,
      "SELECT id::text AS id, topic, key, type, headers, convert_from(payload, 'UTF8')::jsonb AS body FROM #{outbox_table(outbox)} ORDER BY seq"
    )
  end

  defp outbox_table(outbox),
    do: "#{Outbox.info(outbox) |> elem(1) |> Map.fetch!(:table_prefix)}outbox"

  @tag :producer
  test "serializers give the versioned body of each version", %{outbox: outbox} do
    at = ~U[2024-05-01 12:00:00.000000Z]
    user = %User{id: 42, first: "Ada", last: "Lovelace", inserted_at: at}

    assert {:ok, message} =
             Producer.create_and_add_message_to_message_queue(user, :created, "users")

    expected = [
      %{
        "version" => 1,
        "payload" => %{
          "id" => 42,
          "name" => "Ada Lovelace",
          "inserted_at" => "2024-05-01T12:00:00.000000Z"
        }
      },
      %{
        "version" => 2,
        "payload" => %{"id" => 42, "first_name" => "Ada", "last_name" => "Lovelace"}
      }
    ]

    assert message["data"] == expected
    assert message["key"] == "42"
    assert message["type"] == "shop/user/created"

    assert {:ok, _} = Producer.create_and_add_message_to_message_queue(user, :destroyed, "users")

    assert [created, destroyed] = stored(outbox)
    assert created["id"] == message["id"]
    assert created["body"] == expected
    assert created["topic"] == "users"
    assert created["key"] == "42"
    assert created["type"] == "shop/user/created"

    assert created["headers"] == %{
             "source" => "shop",
             "from" => "shop",
             "to" => "shop/user/created"
           }

    assert destroyed["body"] == [
             %{"version" => 1, "payload" => %{"id" => 42}},
             %{"version" => 2, "payload" => %{"id" => 42}}
           ]

    assert destroyed["type"] == "shop/user/destroyed"
  end

  test "a realtime notification goes to the realtime topic with the source merged in", %{
    outbox: outbox
  } do
    assert {:ok, message} =
             Producer.create_and_add_rt_notification_to_message_queue(%{session_id: "s-1"})

    assert message["topic"] == "realtime"

    assert [row] = stored(outbox)

    assert row["body"] == [
             %{"version" => 1, "payload" => %{"source" => "shop", "session_id" => "s-1"}}
           ]

    assert row["key"] == "s-1"
    assert row["type"] == "shop/real_time/notify"
    assert row["topic"] == "realtime"
  end

  test "inside the caller's transaction, a rollback removes the message", %{outbox: outbox} do
    user = %User{id: 1, first: "A", last: "B"}

    assert {:error, :undo} =
             Outbox.transaction(outbox, fn tx ->
               {:ok, _} =
                 Producer.create_and_add_message_to_message_queue(tx, user, :updated, "users")

               {:error, :undo}
             end)

    assert stored(outbox) == []
    assert {:ok, spec} = Producer.message_spec(user, :updated, "users")
    assert {:ok, {_sql, _params}} = Outbox.insert_sql(outbox, spec)
  end

  test "bad producer input is an error and writes nothing", %{outbox: outbox} do
    assert {:error, %Relaybox.Error{code: :invalid_value, message: msg}} =
             Producer.create_and_add_message_to_message_queue(%{id: 1}, :created, "users")

    assert msg =~ "struct"

    assert {:error, %Relaybox.Error{code: :invalid_topic}} =
             Producer.create_and_add_message_to_message_queue(%User{id: 1}, :created, "bad topic")

    assert {:error, %Relaybox.Error{code: :invalid_value}} =
             Producer.create_and_add_message_to_message_queue(
               %Relaybox.Error{},
               :created,
               "users"
             )

    assert {:error, %Relaybox.Error{}} =
             Producer.create_and_add_rt_notification_to_message_queue(%{})

    assert stored(outbox) == []
  end

  defmodule Events.UserCreated do
    @moduledoc "A registered event type."
    @enforce_keys [:user_id, :email]
    defstruct [:user_id, :email, plan: "free"]

    def validate(%{email: email} = e),
      do: if(email =~ "@", do: {:ok, e}, else: {:error, "email has no @"})
  end

  defmodule Events do
    @moduledoc "The event registry under test."
    use Relaybox.EventDispatcher
    register "UserCreated", Relaybox.ProducerTest.Events.UserCreated
  end

  test "the event dispatcher validates data into the registered struct" do
    handler = fn module, event -> {module, event} end

    assert {Events.UserCreated, %Events.UserCreated{user_id: 7, email: "a@b", plan: "free"}} =
             Events.dispatch(
               "UserCreated",
               %{"user_id" => 7, "email" => "a@b", "extra" => 1},
               handler
             )

    assert {:error, {:invalid_event, "UserCreated", reason}} =
             Events.dispatch("UserCreated", %{"user_id" => 7}, handler)

    assert reason =~ "email"

    assert {:error, {:invalid_event, "UserCreated", "email has no @"}} =
             Events.dispatch("UserCreated", %{"user_id" => 7, "email" => "nope"}, handler)

    assert {:error, {:unknown_event, "Nope"}} = Events.dispatch("Nope", %{}, handler)
    assert Events.events() == %{"UserCreated" => Events.UserCreated}
  end
end
