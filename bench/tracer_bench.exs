# Zero-recompile tracing: the cost a traced call pays, Causeway's erl_tracer
# NIF against :dbg with a process tracer (return_trace), on the same function
# in one run, and the peak mailbox of :dbg's tracer process against ours (none).
alias Causeway.Bench

defmodule Bench.Traced do
  def work(x), do: x + 1

  def loop(0), do: :ok

  def loop(n) do
    work(n)
    loop(n - 1)
  end
end

defmodule Bench.TracerCases do
  @n 100_000
  def n, do: @n

  def untraced,
    do: Bench.time(fn -> Bench.Traced.loop(@n) end) |> then(fn {_, ns} -> {@n, ns} end)

  def causeway do
    {:ok, s} =
      Causeway.trace(self(),
        what: [:call, :return],
        functions: [{Bench.Traced, :work, 1}],
        max_events: 10 * @n,
        max_rate: 100_000_000
      )

    {_, ns} = Bench.time(fn -> Bench.Traced.loop(@n) end)
    Causeway.stop_trace(s)
    :ok = Causeway.flush()
    {@n, ns}
  end

  def dbg do
    parent = self()
    {:ok, tracer} = :dbg.tracer(:process, {fn _msg, acc -> acc + 1 end, 0})
    tracer_pid = :dbg.get_tracer() |> elem(1)
    sampler = spawn_link(fn -> sample(tracer_pid, 0, parent) end)
    {:ok, _} = :dbg.p(self(), [:c])
    {:ok, _} = :dbg.tpl(Bench.Traced, :work, 1, [{:_, [], [{:return_trace}]}])
    {_, ns} = Bench.time(fn -> Bench.Traced.loop(@n) end)
    send(sampler, :stop)
    peak = receive do: ({:peak, p} -> p)
    :dbg.stop()
    _ = tracer
    Process.put(:dbg_peak, max(Process.get(:dbg_peak, 0), peak))
    {@n, ns}
  end

  defp sample(pid, peak, parent) do
    receive do
      :stop -> send(parent, {:peak, peak})
    after
      1 ->
        q =
          case Process.info(pid, :message_queue_len) do
            {:message_queue_len, q} -> q
            nil -> 0
          end

        sample(pid, max(peak, q), parent)
    end
  end
end

dir = Bench.tmp_dir("tracer")
{:ok, pid} = Causeway.start_link(dir: dir, ring_size: 262_144)
Process.unlink(pid)
:ok = Application.ensure_started(:runtime_tools)

rows =
  Bench.compare(
    "traced call cost (#{Bench.TracerCases.n()} calls of a 1-arity function, call + return)",
    [
      {"untraced", &Bench.TracerCases.untraced/0},
      {"Causeway.trace (erl_tracer NIF)", &Bench.TracerCases.causeway/0},
      {":dbg, process tracer, return_trace", &Bench.TracerCases.dbg/0}
    ],
    runs: 5,
    unit: "call"
  )

by = Map.new(rows, &{&1.name, &1.median})
base = by["untraced"]
cw = by["Causeway.trace (erl_tracer NIF)"] - base
dbg = by[":dbg, process tracer, return_trace"] - base

IO.puts(
  "  overhead per traced call (median minus untraced): Causeway #{round(cw)} ns, :dbg #{round(dbg)} ns — Causeway #{Float.round(dbg / max(cw, 1), 1)}× cheaper"
)

IO.puts(
  "  peak mailbox of :dbg's tracer process: #{Process.get(:dbg_peak, 0)} messages; Causeway's tracer has no process and no mailbox"
)

Causeway.stop()
File.rm_rf!(dir)
