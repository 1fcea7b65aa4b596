# End to end: events captured by Causeway.Runtime and persisted to RocksDB,
# against a baseline of send/2 to a collector process that does :ets.insert/2.
alias Causeway.Bench

n = String.to_integer(System.get_env("BENCH_EVENTS", "200000"))

collector = fn table ->
  spawn(fn ->
    loop = fn loop, i ->
      receive do
        {:event, e} ->
          :ets.insert(table, {i, e})
          loop.(loop, i + 1)

        {:sync, from} ->
          send(from, :synced)
          loop.(loop, i)
      end
    end

    loop.(loop, 0)
  end)
end

baseline = fn ->
  table = :ets.new(:bench, [:set, :public])
  pid = collector.(table)

  {_, ns} =
    Bench.time(fn ->
      for i <- 1..n, do: send(pid, {:event, {:function_entry, Bench.Mod, :work, [i, :a, "b"]}})
      send(pid, {:sync, self()})
      receive do: (:synced -> :ok)
    end)

  Process.exit(pid, :kill)
  :ets.delete(table)
  {n, ns}
end

causeway = fn ->
  dir = Bench.tmp_dir("pipeline")
  {:ok, pid} = Causeway.start_link(dir: dir, ring_size: 262_144)
  Process.unlink(pid)

  {_, ns} =
    Bench.time(fn ->
      for i <- 1..n, do: Causeway.Runtime.message_send(self(), {:work, i, :a, "b"})
      :ok = Causeway.flush()
    end)

  m = Causeway.metrics()
  Causeway.stop()
  File.rm_rf!(dir)

  if m.persisted != n,
    do: IO.puts("  (note: #{m.dropped_total} of #{n} dropped: #{inspect(m.dropped)})")

  {n, ns}
end

capture_only = fn ->
  dir = Bench.tmp_dir("capture")
  {:ok, pid} = Causeway.start_link(dir: dir, ring_size: 262_144)
  Process.unlink(pid)

  {_, ns} =
    Bench.time(fn ->
      for i <- 1..n, do: Causeway.Runtime.message_send(self(), {:work, i, :a, "b"})
    end)

  :ok = Causeway.flush()
  Causeway.stop()
  File.rm_rf!(dir)
  {n, ns}
end

Bench.compare("captured and persisted (#{n} events, 1 producer)", [
  {"baseline: send/2 to a collector doing :ets.insert", baseline},
  {"Causeway: capture + correlate + RocksDB, until flush", causeway},
  {"Causeway: capture only (Runtime call)", capture_only}
])
