defmodule Relaybox.MigrationTest do
  use Relaybox.Case, async: true

  @moduletag :tmp_dir

  test "up/down give the schema SQL that a migration tool can apply and revert", %{outbox: outbox} do
    prefix = "ex_#{unique()}_m_"

    on_exit(fn -> run_script(Outbox.open!(db_url!()), Relaybox.Migration.down(prefix: prefix)) end)

    up = Relaybox.Migration.up(version: 1, prefix: prefix, partitions: 4)
    assert up =~ "CREATE TABLE IF NOT EXISTS #{prefix}outbox"
    run_script(outbox, up)

    # The schema applied by a host tool is recognised: no migration needed to enqueue.
    other = Outbox.open!(db_url!(), table_prefix: prefix)
    assert :ok = Outbox.migrate(other)
    assert {:ok, _} = Outbox.enqueue(other, %{topic: "t", payload: 1})
    assert [%{"n" => 4}] = sql!(outbox, "SELECT count(*) AS n FROM #{prefix}leases")

    # Version 2 (idempotency keys) reverts on its own, and comes back with up.
    tables = fn ->
      sql!(outbox, "SELECT tablename FROM pg_tables WHERE tablename LIKE $1", [prefix <> "%"])
      |> Enum.map(& &1["tablename"])
    end

    assert "#{prefix}idempotency_keys" in tables.()
    run_script(outbox, Relaybox.Migration.down(version: 2, prefix: prefix))
    refute "#{prefix}idempotency_keys" in tables.()
    assert "#{prefix}outbox" in tables.()
    run_script(outbox, Relaybox.Migration.up(version: 2, prefix: prefix))
    assert "#{prefix}idempotency_keys" in tables.()

    # Version 3 (leases of relays serving some topics) likewise.
    assert "#{prefix}route_leases" in tables.()
    run_script(outbox, Relaybox.Migration.down(version: 3, prefix: prefix))
    refute "#{prefix}route_leases" in tables.()
    refute "#{prefix}relay_routes" in tables.()
    assert "#{prefix}idempotency_keys" in tables.()
    run_script(outbox, Relaybox.Migration.up(version: 3, prefix: prefix))
    assert "#{prefix}relay_routes" in tables.()

    # Version 4 (keys parked behind a dead letter): the dead letters' position
    # column and their index.
    parked = fn ->
      sql!(
        outbox,
        "SELECT (SELECT count(*) FROM information_schema.columns WHERE table_name = $1 AND column_name = 'seq') + " <>
          "(SELECT count(*) FROM pg_indexes WHERE indexname = $2) AS n",
        [prefix <> "dead_letters", prefix <> "dead_letters_parked"]
      )
    end

    assert [%{"n" => 2}] = parked.()
    run_script(outbox, Relaybox.Migration.down(version: 4, prefix: prefix))
    assert [%{"n" => 0}] = parked.()
    assert "#{prefix}dead_letters" in tables.()
    run_script(outbox, Relaybox.Migration.up(version: 4, prefix: prefix))
    assert [%{"n" => 2}] = parked.()

    run_script(outbox, Relaybox.Migration.down(version: 1, prefix: prefix))
    assert [] = tables.()

    assert_raise ArgumentError, ~r/version/, fn -> Relaybox.Migration.up(version: 5) end
    assert_raise Relaybox.Error, ~r/prefix/, fn -> Relaybox.Migration.up(prefix: "x;drop") end
  end

  test "up_statements/down_statements are the scripts one statement a string" do
    up = Relaybox.Migration.up_statements(prefix: "x_")
    assert Enum.join(up, ";\n") =~ "CREATE TABLE IF NOT EXISTS x_outbox"
    refute Enum.any?(up, &(&1 =~ ";" or &1 =~ ~r/^--/m))
    assert "DROP TABLE IF EXISTS x_outbox" in Relaybox.Migration.down_statements(prefix: "x_")
  end

  defp run_script(outbox, sql) do
    Outbox.transaction!(outbox, fn tx ->
      sql
      |> String.split(";\n", trim: true)
      |> Enum.reject(&(String.trim(&1) == ""))
      |> Enum.each(&Tx.execute!(tx, &1))
    end)
  end

  test "mix relaybox.gen.serializer writes a serializer the producer can use", %{tmp_dir: dir} do
    Mix.shell(Mix.Shell.Process)
    path = Path.join(dir, "account.ex")

    Mix.Tasks.Relaybox.Gen.Serializer.run([
      "Relaybox.GenTest.Serializers",
      "Relaybox.GenTest.Account",
      "--fields",
      "id,name",
      "--path",
      path
    ])

    [{module, _}] = Code.compile_file(path)
    assert module == Relaybox.GenTest.Serializers.Account
    account = %{id: 5, name: "acme"}
    assert module.message_versions() == [1]
    assert module.created(account, 1) == %{id: 5, name: "acme"}
    assert module.destroyed(account, 1) == %{id: 5}
    assert module.partition_key(account) == "5"
    assert module.message_route(:created) == "account/created"
  end
end
