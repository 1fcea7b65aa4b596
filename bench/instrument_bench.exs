# The overhead of `use Causeway.Instrument` on a real function, against the
# same function uninstrumented, in one run: with Causeway recording (writers
# running, or paused: the capture path alone), and with no instance running
# (the cost of the check alone).
alias Causeway.Bench

defmodule Bench.Plain do
  def price(items, discount, tax),
    do: items |> Enum.map(&(&1 * (1 - discount))) |> Enum.sum() |> Kernel.*(1 + tax)
end

defmodule Bench.Instrumented do
  use Causeway.Instrument

  def price(items, discount, tax),
    do: items |> Enum.map(&(&1 * (1 - discount))) |> Enum.sum() |> Kernel.*(1 + tax)
end

defmodule Bench.InstrumentLoop do
  @n 100_000
  def n, do: @n
  @items [10, 20, 30]

  def plain(0), do: :ok

  def plain(i) do
    Bench.Plain.price(@items, 0.1, 0.2)
    plain(i - 1)
  end

  def instrumented(0), do: :ok

  def instrumented(i) do
    Bench.Instrumented.price(@items, 0.1, 0.2)
    instrumented(i - 1)
  end

  def run(f), do: Bench.time(fn -> f.(@n) end) |> then(fn {_, ns} -> {@n, ns} end)
end

dir = Bench.tmp_dir("instrument")

Bench.compare(
  "use Causeway.Instrument on a 3-argument function (#{Bench.InstrumentLoop.n()} calls)",
  [
    {"uninstrumented", fn -> Bench.InstrumentLoop.run(&Bench.InstrumentLoop.plain/1) end},
    {"instrumented, no Causeway running",
     fn -> Bench.InstrumentLoop.run(&Bench.InstrumentLoop.instrumented/1) end},
    {"instrumented, recording (entry + exit)",
     fn ->
       {:ok, pid} = Causeway.start_link(dir: dir, ring_size: 262_144)
       Process.unlink(pid)
       r = Bench.InstrumentLoop.run(&Bench.InstrumentLoop.instrumented/1)
       :ok = Causeway.flush()
       Causeway.stop()
       r
     end},
    # the capture path alone: on 2 cores the writers otherwise take the
    # other core's share from the producer
    {"instrumented, recording, writers paused",
     fn ->
       {:ok, pid} = Causeway.start_link(dir: dir, ring_size: 262_144)
       Process.unlink(pid)
       h = Causeway.Instance.handle!()
       Causeway.Native.pipeline_inject(h, :pause, 1)
       r = Bench.InstrumentLoop.run(&Bench.InstrumentLoop.instrumented/1)
       Causeway.Native.pipeline_inject(h, :pause, 0)
       :ok = Causeway.flush()
       Causeway.stop()
       r
     end}
  ],
  runs: 5,
  unit: "call"
)

File.rm_rf!(dir)
