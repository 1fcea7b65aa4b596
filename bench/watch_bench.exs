# Causeway.watch/2: the cost per handled message of an unmodified GenServer,
# watched (the :sys debug hook recording receive, reply and state into the
# rings) vs unwatched, in one run (`mix bench watch`).

defmodule Bench.Watch.Counter do
  use GenServer
  def init(n), do: {:ok, %{n: n, log: []}}
  def handle_call(:inc, _from, s), do: {:reply, s.n + 1, %{s | n: s.n + 1}}
  def handle_cast({:add, k}, s), do: {:noreply, %{s | n: s.n + k}}
end

defmodule Bench.Watch do
  @calls 20_000

  def calls, do: @calls

  # one run: @calls GenServer.call round trips to a fresh server
  def run(watch?) do
    {:ok, pid} = GenServer.start(Bench.Watch.Counter, 0)

    w =
      if watch?,
        do:
          elem(
            Causeway.watch(pid,
              max_events: 10_000_000,
              max_rate: 100_000_000,
              duration_ms: 600_000
            ),
            1
          )

    t0 = System.monotonic_time(:nanosecond)
    for _ <- 1..@calls, do: GenServer.call(pid, :inc)
    ns = System.monotonic_time(:nanosecond) - t0
    if w, do: Causeway.unwatch(w)
    GenServer.stop(pid)
    {@calls, ns}
  end
end

dir = Path.join(System.tmp_dir!(), "causeway-bench-watch-#{System.unique_integer([:positive])}")
File.rm_rf!(dir)
{:ok, _} = Causeway.start_link(dir: dir, ring_size: 262_144)

Causeway.Bench.compare(
  "GenServer.call round trip, #{Bench.Watch.calls()} calls per run",
  [
    {"unwatched", fn -> Bench.Watch.run(false) end},
    {"watched (receive + reply + state change per call)", fn -> Bench.Watch.run(true) end}
  ],
  runs: 7,
  unit: "handled message"
)

:ok = Causeway.flush()
m = Causeway.metrics()
IO.puts("  recorded: #{m.persisted} persisted, #{m.dropped_total} dropped")
Causeway.stop()
File.rm_rf!(dir)
