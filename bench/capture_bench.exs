# Layer 1: the cost of capturing one event on the caller's scheduler, against
# the designs a pure-Elixir tracer would use, in the same run (rounds
# interleave the cases). Causeway's writers are paused from its first run to
# the end of the comparison (they would otherwise share the two cores with
# the producers); the rings hold all its runs.
alias Causeway.Bench

defmodule Bench.Capture do
  @n 50_000
  def n, do: @n

  # --- the workloads: one event per iteration, 3 small arguments ---------

  # an entry and its exit: two events per iteration (the shape instrumented code has)
  def causeway(0), do: :ok

  def causeway(i) do
    id = Causeway.Runtime.function_entry(Bench.Mod, :work, [i, :a, "b"])
    Causeway.Runtime.function_exit(id, :ok)
    causeway(i - 2)
  end

  def noop_nif(0), do: :ok

  def noop_nif(i) do
    Causeway.Native.bench_noop([i, :a, "b"])
    noop_nif(i - 1)
  end

  def ets(_t, 0), do: :ok

  def ets(t, i) do
    :ets.insert(t, {i, Bench.Mod, :work, [i, :a, "b"]})
    ets(t, i - 1)
  end

  def send_to(_pid, 0), do: :ok

  def send_to(pid, i) do
    send(pid, {:event, Bench.Mod, :work, [i, :a, "b"]})
    send_to(pid, i - 1)
  end

  # An Elixir ring: a write cursor in :atomics, slots in a public ETS table.
  def elixir_ring({_a, _t, _size}, 0), do: :ok

  def elixir_ring({a, t, size} = ring, i) do
    slot = :atomics.add_get(a, 1, 1)

    :ets.insert(
      t,
      {rem(slot, size), System.monotonic_time(), self(), Bench.Mod, :work, [i, :a, "b"]}
    )

    elixir_ring(ring, i - 1)
  end

  def collector do
    receive do
      {:stop, from} -> send(from, :stopped)
      _ -> collector()
    end
  end

  # --- runners ---------------------------------------------------------------

  def run_parallel(procs, fun) do
    per = div(@n, procs)
    ns = Bench.parallel_runs(procs, fn -> fun.(per) end)
    {per * procs, ns}
  end

  def cases(procs) do
    h = Causeway.Instance.handle!()

    causeway = fn ->
      # writers stay paused until the comparison ends (the rings hold every
      # run): no persisting of an earlier run overlaps a measured one
      Causeway.Native.pipeline_inject(h, :pause, 1)
      run_parallel(procs, fn n -> causeway(n - rem(n, 2)) end)
    end

    ets = fn ->
      t = :ets.new(:b, [:set, :public, write_concurrency: true])
      r = run_parallel(procs, fn n -> ets(t, n) end)
      :ets.delete(t)
      r
    end

    send_ = fn ->
      pid = spawn(&collector/0)
      r = run_parallel(procs, fn n -> send_to(pid, n) end)
      send(pid, {:stop, self()})
      receive do: (:stopped -> :ok)
      r
    end

    ring = fn ->
      size = 65_536
      r0 = {:atomics.new(1, []), :ets.new(:r, [:set, :public, write_concurrency: true]), size}
      r = run_parallel(procs, fn n -> elixir_ring(r0, n) end)
      :ets.delete(elem(r0, 1))
      r
    end

    [
      {"trivial NIF call (the floor)", fn -> run_parallel(procs, &noop_nif/1) end},
      {"Causeway.Runtime entry + exit (per event)", causeway},
      {"Elixir ring (:atomics + ETS)", ring},
      {"send/2 to a collector process", send_},
      {":ets.insert/2", ets}
    ]
  end
end

dir = Bench.tmp_dir("capture")
# Rings of 1M slots per shard (allocated and touched up front): the 8 runs
# of one comparison (400k events) stay below half of one shard, where
# backpressure would start.
{:ok, pid} = Causeway.start_link(dir: dir, ring_size: 1_048_576)
Process.unlink(pid)

for procs <- [1, 2] do
  rows =
    Bench.compare(
      "capture cost, #{procs} producer process(es), #{Bench.Capture.n()} events per run",
      Bench.Capture.cases(procs),
      runs: 7
    )

  # persist what the comparison captured before the next one
  Causeway.Native.pipeline_inject(Causeway.Instance.handle!(), :pause, 0)
  :ok = Causeway.flush()

  by = Map.new(rows, &{&1.name, &1.median})
  cw = by["Causeway.Runtime entry + exit (per event)"]

  paired =
    Bench.paired_ratio(
      rows,
      "Elixir ring (:atomics + ETS)",
      "Causeway.Runtime entry + exit (per event)"
    )

  # every event the comparison captured was kept: none refused, sampled or lost
  IO.puts("  Causeway's runs: #{Causeway.metrics().dropped_total} events dropped so far")

  IO.puts(
    "  Causeway vs Elixir ring: #{Float.round(by["Elixir ring (:atomics + ETS)"] / cw, 1)}× faster " <>
      "(ratio of medians; median of the per-round ratios #{Float.round(paired, 1)}×); " <>
      "aggregate #{round(1.0e9 / cw)} events/s into the rings"
  )
end

# Zero growth of heaps and mailboxes from capture: a fresh process runs the
# loop; its memory (after a GC) and mailbox before and after, next to the same
# loop calling the trivial NIF (the loop's own garbage), and the instance
# process's mailbox (captures never message it).
defmodule Bench.Capture.Memory do
  def in_fresh_process(loop) do
    parent = self()

    spawn_link(fn ->
      :erlang.garbage_collect()
      {:memory, m0} = Process.info(self(), :memory)
      loop.()
      :erlang.garbage_collect()
      {:memory, m1} = Process.info(self(), :memory)
      {:message_queue_len, q} = Process.info(self(), :message_queue_len)
      send(parent, {:measured, m0, m1, q})
    end)

    receive do
      {:measured, m0, m1, q} -> {m0, m1, q}
    end
  end
end

h = Causeway.Instance.handle!()
instance = Process.whereis(Causeway)
{:message_queue_len, iq0} = Process.info(instance, :message_queue_len)
Causeway.Native.pipeline_inject(h, :pause, 1)
# (25 000 entry/exit pairs)
{c0, c1, cq} = Bench.Capture.Memory.in_fresh_process(fn -> Bench.Capture.causeway(50_000) end)
{:message_queue_len, iq1} = Process.info(instance, :message_queue_len)
Causeway.Native.pipeline_inject(h, :pause, 0)
{n0, n1, nq} = Bench.Capture.Memory.in_fresh_process(fn -> Bench.Capture.noop_nif(50_000) end)

IO.puts("""

memory of a fresh producer process after a GC, before / after 50k events:
  captured by Causeway: #{c0} / #{c1} bytes, mailbox #{cq}
  trivial NIF (same loop): #{n0} / #{n1} bytes, mailbox #{nq}
  the instance process's mailbox before / after: #{iq0} / #{iq1}\
""")

Causeway.stop()
File.rm_rf!(dir)
