defmodule Relaybox.OutboxTest do
  use Relaybox.Case, async: true

  test "a committed transaction writes the business row and the event together", %{
    outbox: outbox,
    prefix: prefix
  } do
    sql!(outbox, "CREATE TABLE #{prefix}orders (id bigserial PRIMARY KEY, total int)")

    assert {:ok, {order_id, message_id}} =
             Outbox.transaction(outbox, fn tx ->
               [%{"id" => id}] =
                 Tx.query!(tx, "INSERT INTO #{prefix}orders (total) VALUES ($1) RETURNING id", [
                   42
                 ])

               {id,
                Tx.enqueue!(tx,
                  topic: "orders",
                  key: "o-#{id}",
                  type: "OrderPlaced",
                  payload: %{id: id}
                )}
             end)

    assert [%{"total" => 42}] =
             sql!(outbox, "SELECT total FROM #{prefix}orders WHERE id = $1", [order_id])

    assert [%{"id" => ^message_id, "key" => key, "type" => "OrderPlaced", "body" => body}] =
             sql!(
               outbox,
               "SELECT id::text AS id, key, type, convert_from(payload, 'UTF8')::jsonb AS body FROM #{prefix}outbox"
             )

    assert key == "o-#{order_id}"
    assert body == %{"id" => order_id}
  end

  test "rollback leaves neither the row nor the event", %{outbox: outbox, prefix: prefix} do
    sql!(outbox, "CREATE TABLE #{prefix}orders (id bigserial PRIMARY KEY, total int)")

    assert {:error, :out_of_stock} =
             Outbox.transaction(outbox, fn tx ->
               Tx.execute!(tx, "INSERT INTO #{prefix}orders (total) VALUES (1)")
               Tx.enqueue!(tx, %{topic: "orders", payload: %{n: 1}})
               {:error, :out_of_stock}
             end)

    assert {:error, :changed_mind} =
             Outbox.transaction(outbox, fn tx ->
               Tx.enqueue!(tx, %{topic: "orders", payload: %{n: 2}})
               Tx.rollback(tx, :changed_mind)
             end)

    assert_raise RuntimeError, "boom", fn ->
      Outbox.transaction(outbox, fn tx ->
        Tx.enqueue!(tx, %{topic: "orders", payload: %{n: 3}})
        raise "boom"
      end)
    end

    assert count!(outbox, "#{prefix}orders") == 0
    assert {:ok, 0} = Outbox.pending_count(outbox)
  end

  test "bad input returns a typed error with a clear reason and writes nothing", %{
    outbox: outbox
  } do
    assert {:error, %Relaybox.Error{code: :invalid_topic, message: msg}} =
             Outbox.enqueue(outbox, %{topic: "no spaces", payload: 1})

    assert msg =~ "no spaces"

    assert {:error, %Relaybox.Error{code: :invalid_message, message: msg}} =
             Outbox.enqueue(outbox, %{topic: "t", payload: 1, kee: "typo"})

    assert msg =~ "kee"

    assert {:error, %Relaybox.Error{code: :invalid_message, message: msg}} =
             Outbox.enqueue(outbox, %{topic: "t"})

    assert msg =~ "payload"

    assert {:error, %Relaybox.Error{code: :invalid_message, message: msg}} =
             Outbox.enqueue(outbox, %{topic: "t", payload: %{pid: self()}})

    assert msg =~ "JSON"

    assert {:error, %Relaybox.Error{code: :invalid_header}} =
             Outbox.enqueue(outbox, %{topic: "t", payload: 1, headers: %{"bad header" => "x"}})

    # The transaction stays usable after a rejected message.
    assert {:ok, {{:error, %Relaybox.Error{code: :invalid_topic}}, id}} =
             Outbox.transaction(outbox, fn tx ->
               {Tx.enqueue(tx, %{topic: "", payload: 1}),
                Tx.enqueue!(tx, %{topic: "ok", payload: 1})}
             end)

    assert is_binary(id)

    assert {:error, %Relaybox.Error{code: :invalid_value, message: msg}} =
             Outbox.transaction(outbox, &Tx.query(&1, "SELECT $1", [{:uuid, "nope"}]))

    assert msg =~ "parameter $1"

    assert {:error, %Relaybox.Error{code: :invalid_config, message: msg}} =
             Outbox.open(db_url!(), partitions: 0)

    assert msg =~ "partitions"

    assert {:error, %Relaybox.Error{code: :invalid_config, message: msg}} =
             Outbox.open(db_url!(), max_connections: 2, min_connections: 3)

    assert msg =~ "min_connections"

    assert_raise Relaybox.Error, ~r/invalid topic/, fn ->
      Outbox.transaction!(outbox, &Tx.enqueue!(&1, %{topic: "a b", payload: 1}))
    end

    assert {:ok, 1} = Outbox.pending_count(outbox)
  end

  test "a database error is a typed error and the password never shows", %{outbox: outbox} do
    assert {:error, %Relaybox.Error{code: :database, message: msg}} =
             Outbox.transaction(outbox, &Tx.query(&1, "SELECT * FROM no_such_table"))

    assert msg =~ "no_such_table"

    assert {:error, %Relaybox.Error{} = error} =
             Outbox.open("postgres://app:s3cretpw@127.0.0.1:1/app", connect_timeout: 300)

    refute error.message =~ "s3cretpw"
    refute inspect(error) =~ "s3cretpw"
  end

  test "values round-trip through SQL parameters and rows", %{outbox: outbox} do
    now = DateTime.utc_now()

    [row] =
      sql!(
        outbox,
        "SELECT $1::bigint AS i, $2::float8 AS f, $3::text AS t, $4::bytea AS b, $5::jsonb AS j, $6::timestamptz AS ts, $7::boolean AS yes, $8::text AS null_value, $9::uuid AS u",
        [
          7,
          1.5,
          "héllo",
          {:bytes, <<0, 255>>},
          %{a: [1, nil]},
          now,
          true,
          nil,
          {:uuid, "01890a5d-ac96-774b-b9aa-0123456789ab"}
        ]
      )

    assert row == %{
             "i" => 7,
             "f" => 1.5,
             "t" => "héllo",
             "b" => <<0, 255>>,
             "j" => %{"a" => [1, nil]},
             "ts" => now,
             "yes" => true,
             "null_value" => nil,
             "u" => "01890a5d-ac96-774b-b9aa-0123456789ab"
           }
  end

  test "insert_sql gives a statement a driver of its own can run (the Ecto path)", %{
    outbox: outbox,
    prefix: prefix
  } do
    spec = %{
      topic: "ecto",
      key: "k1",
      type: "T",
      payload: %{a: 1},
      headers: %{"source" => "shop"}
    }

    assert {:ok, {sql, params}} = Outbox.insert_sql(outbox, spec)
    assert sql =~ "INSERT INTO #{prefix}outbox"
    assert Outbox.wake_statement(outbox) == "NOTIFY #{prefix}outbox"

    # Text, an integer and a binary: the statement casts them itself.
    assert [
             id,
             "ecto",
             "k1",
             partition,
             "T",
             ~s({"a":1}),
             "application/json",
             headers,
             created,
             available
           ] = params

    assert id =~ ~r/^[0-9a-f-]{36}$/
    assert headers == ~s({"source":"shop"})
    assert partition == rem(:erlang.crc32("k1"), 16)
    assert created == available
    assert {:ok, created_at, 0} = DateTime.from_iso8601(created)

    # Run it as Repo.query!/2 would, in another transaction, binding the parameters as they are.
    Outbox.transaction!(outbox, &Tx.execute!(&1, sql, params))

    assert [
             %{
               "id" => ^id,
               "key" => "k1",
               "headers" => %{"source" => "shop"},
               "created_at" => ^created_at
             }
           ] =
             sql!(outbox, "SELECT id::text AS id, key, headers, created_at FROM #{prefix}outbox")

    assert {:error, %Relaybox.Error{code: :invalid_topic}} =
             Outbox.insert_sql(outbox, %{topic: "bad topic", payload: 1})

    assert {:ok, 1} = Outbox.pending_count(outbox)
  end

  test "an outbox registered under a name is usable by name", %{prefix: prefix} do
    name = :"outbox_#{unique()}"
    start_supervised!({Outbox, url: db_url!(), name: name, table_prefix: prefix})
    assert {:ok, id} = Outbox.enqueue(name, %{topic: "named", payload: "hi"})
    assert is_binary(id)
    assert {:ok, 1} = Outbox.pending_count(name)

    assert {:error, %Relaybox.Error{code: :not_found}} =
             Outbox.enqueue(:"no_such_#{unique()}", %{topic: "t", payload: 1})
  end

  test "a transaction whose process dies is rolled back and releases its locks", %{
    outbox: outbox,
    prefix: prefix
  } do
    sql!(outbox, "CREATE TABLE #{prefix}stock (id int PRIMARY KEY, n int)")
    sql!(outbox, "INSERT INTO #{prefix}stock VALUES (1, 10)")
    parent = self()

    owner =
      spawn(fn ->
        Outbox.transaction(outbox, fn tx ->
          Tx.execute!(tx, "UPDATE #{prefix}stock SET n = 0 WHERE id = 1")
          Tx.enqueue!(tx, %{topic: "t", payload: 1})
          send(parent, :locked)
          Process.sleep(:infinity)
        end)
      end)

    assert_receive :locked, 5_000
    Process.exit(owner, :kill)

    # The row lock goes away with the process (the transaction is garbage collected).
    eventually("lock released", fn ->
      :erlang.garbage_collect()

      match?(
        {:ok, {:ok, 1}},
        Outbox.transaction(outbox, fn tx ->
          Tx.execute!(tx, "SET LOCAL lock_timeout = '200ms'")
          Tx.execute(tx, "UPDATE #{prefix}stock SET n = n + 1 WHERE id = 1")
        end)
      )
    end)

    assert [%{"n" => 11}] = sql!(outbox, "SELECT n FROM #{prefix}stock")
    assert {:ok, 0} = Outbox.pending_count(outbox)
  end

  test "transaction! raises a :rollback error for {:error, reason}", %{outbox: outbox} do
    assert_raise Relaybox.Error, ~r/rolled back: :nope/, fn ->
      Outbox.transaction!(outbox, fn _tx -> {:error, :nope} end)
    end
  end

  test "a panic in the NIF becomes an internal error, and the ! variant raises" do
    assert {:error, %Relaybox.Error{code: :internal, message: msg}} =
             Relaybox.Native.call(&Relaybox.Native.panic_for_tests("async", &1))

    assert msg =~ "requested by the test"

    assert {:error, %Relaybox.Error{code: :internal}} =
             Relaybox.Native.panic_for_tests("sync", make_ref())

    assert_raise Relaybox.Error, ~r/panic/, fn ->
      Relaybox.Native.call(&Relaybox.Native.panic_for_tests("async", &1))
      |> Relaybox.Native.unwrap!()
    end

    # The VM and the runtime keep working.
    assert Relaybox.version() =~ ~r/^\d+\.\d+\.\d+/
  end

  test "normal schedulers keep running while slow database calls wait", %{outbox: outbox} do
    parent = self()
    ticker = spawn_link(fn -> tick(parent, 0) end)
    callers = System.schedulers_online() + 2

    started = System.monotonic_time(:millisecond)

    1..callers
    |> Enum.map(fn _ ->
      Task.async(fn -> sql!(outbox, "SELECT 1 AS slept FROM pg_sleep(1.0)") end)
    end)
    |> Enum.each(&assert(Task.await(&1, 15_000) == [%{"slept" => 1}]))

    elapsed = System.monotonic_time(:millisecond) - started
    send(ticker, {:report, self()})
    assert_receive {:ticks, ticks}, 1_000
    # The ticker sleeps 10 ms per tick. With more callers than schedulers, NIF
    # calls that held their schedulers while waiting would have stopped it for
    # the whole second; a loaded machine still lets it tick a few dozen times.
    assert ticks >= 10, "#{ticks} ticks in #{elapsed} ms"
  end

  defp tick(parent, n) do
    receive do
      {:report, to} -> send(to, {:ticks, n})
    after
      10 -> tick(parent, n + 1)
    end
  end
end
