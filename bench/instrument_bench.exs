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

# A realistic workload (issue 12): a recursive encoder over nested maps,
# lists, structs and binaries of 10–1 000 bytes, several thousand calls per
# document, compiled twice (plain and instrumented) from one source.
defmodule EncBench.Doc do
  defstruct [:id, :name, :tags, :body]

  def build(i) do
    %{
      "id" => i,
      "items" =>
        for j <- 1..40 do
          %EncBench.Doc{
            id: j,
            name: "item-#{j}",
            tags: [:a, :b, j],
            body: :binary.copy("x", 10 + rem(j * 37, 990))
          }
        end,
      "meta" => %{"nested" => %{"deep" => [1, 2.5, "three", nil, true]}}
    }
  end
end

encoder = fn name, instrument? ->
  """
  defmodule #{name} do
    #{if instrument?, do: "use Causeway.Instrument", else: ""}
    def encode(%{__struct__: _} = d), do: encode(Map.from_struct(d))
    def encode(m) when is_map(m), do: ["{", pairs(Map.to_list(m), []), "}"]
    def encode(l) when is_list(l), do: ["[", items(l, []), "]"]
    def encode(b) when is_binary(b), do: [?", escape(b), ?"]
    def encode(a) when is_atom(a), do: encode(Atom.to_string(a))
    def encode(n) when is_number(n), do: to_string(n)
    def pairs([], acc), do: Enum.reverse(acc) |> Enum.intersperse(",")
    def pairs([{k, v} | rest], acc), do: pairs(rest, [[encode(to_string(k)), ":", encode(v)] | acc])
    def items([], acc), do: Enum.reverse(acc) |> Enum.intersperse(",")
    def items([x | rest], acc), do: items(rest, [encode(x) | acc])
    def escape(b), do: String.replace(b, "\\"", "\\\\\\"")
  end
  """
end

Code.compile_string(encoder.("EncBench.Plain", false))
Code.compile_string(encoder.("EncBench.Instrumented", true))
docs = Enum.map(1..10, &EncBench.Doc.build/1)

# The check alone (no instance running), on its own: plain and
# instrumented back to back in many rounds, before any instance has run
# here (an instance's writers and RocksDB's background work would otherwise
# still be finishing while the next case runs); the ratio is taken per
# round, then its median.
enc_plain = fn mod ->
  {_, ns} = Bench.time(fn -> for d <- docs, do: IO.iodata_length(mod.encode(d)) end)
  {length(docs), ns}
end

quiet =
  Bench.compare(
    "the recursive encoder with no instance running (per document)",
    [
      {"plain", fn -> enc_plain.(EncBench.Plain) end},
      {"instrumented, no Causeway running", fn -> enc_plain.(EncBench.Instrumented) end}
    ],
    runs: 31,
    warmup: 3,
    unit: "document"
  )

no_instance = Bench.paired_ratio(quiet, "instrumented, no Causeway running", "plain")

IO.puts(
  "  no instance: #{Float.round((no_instance - 1) * 100, 1)} % over plain (median of per-round ratios)"
)

# events per document: every encode/pairs/items/escape call is an entry and an exit
calls_per_doc =
  (fn ->
     {:ok, pid} = Causeway.start_link(dir: dir <> "-count", ring_size: 1_048_576, overflow: :wait)
     Process.unlink(pid)
     EncBench.Instrumented.encode(hd(docs))
     :ok = Causeway.flush()
     n = Causeway.metrics().persisted
     Causeway.stop()
     File.rm_rf!(dir <> "-count")
     n
   end).()

enc_run = fn mod ->
  {_, ns} = Bench.time(fn -> for d <- docs, do: IO.iodata_length(mod.encode(d)) end)
  {length(docs) * calls_per_doc, ns}
end

IO.puts("\nrecursive encoder: #{calls_per_doc} events per document, 10 documents per run")

rows =
  Bench.compare(
    "a recursive encoder over nested maps, lists, structs and binaries (per event of the instrumented run)",
    [
      {"plain", fn -> enc_run.(EncBench.Plain) end},
      {"instrumented, no Causeway running", fn -> enc_run.(EncBench.Instrumented) end},
      {"instrumented, recording",
       fn ->
         {:ok, pid} = Causeway.start_link(dir: dir, ring_size: 262_144)
         Process.unlink(pid)
         # an instance as it runs, not as it starts: one document recorded
         # and flushed first, untimed (the store's open and the writers'
         # start are otherwise in the 10 ms that are measured)
         EncBench.Instrumented.encode(hd(docs))
         :ok = Causeway.flush()
         r = enc_run.(EncBench.Instrumented)
         :ok = Causeway.flush()
         m = Causeway.metrics()
         Causeway.stop()
         File.rm_rf!(dir)
         IO.puts("  (recording run: #{m.persisted} persisted, #{m.dropped_total} dropped)")
         r
       end}
    ],
    runs: 9,
    unit: "event"
  )

# the recording overhead per round (recording − plain, both of that round),
# then its median: the machine's speed moves between rounds
[plain, _off, on] = Enum.map(rows, & &1.samples)

overhead = Enum.zip_with(on, plain, &(&1 - &2)) |> Enum.sort() |> Enum.at(div(length(on), 2))

IO.puts(
  "  recording overhead #{Float.round(overhead, 1)} ns per event (median of per-round " <>
    "differences; target <= 400); no instance: #{Float.round((no_instance - 1) * 100, 1)} % " <>
    "over plain (the quiet comparison above; target <= 5 %)"
)

File.rm_rf!(dir)
