{:ok, _} = Application.ensure_all_started(:ecto_sql)
{:ok, _} = Application.ensure_all_started(:postgrex)

# Test modules that run at the same time migrate the same database with
# Ecto, and two concurrent creations of its migrations table can collide
# (PostgreSQL's CREATE TABLE IF NOT EXISTS is not safe against itself): the
# table is created here, once, before any module starts.
Relaybox.TestRepo.start!(Relaybox.Case.db_url!())
[] = Ecto.Migrator.run(Relaybox.TestRepo, [], :up, all: true, log: false)

ExUnit.start(capture_log: true)
