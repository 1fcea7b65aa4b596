defmodule Causeway.Stress.Soak do
  @moduledoc """
  A soak: two producers capture flat out into an instance with default
  settings for `minutes`, while every `sample_s` seconds the BEAM's memory,
  Causeway's native memory, RocksDB's memory, the OS process's resident set
  (`VmRSS` of `/proc/self/status`), the drops and the backpressure level are
  sampled. It ends with a table and a verdict:

    * memory flat — the mean of the last third of the samples within 5 % of
      the mean of the first third, for the BEAM (after a warm-up of one
      sample in six), for Causeway's native memory (same) and for the OS
      process's resident set. RocksDB's block cache fills towards its cap
      as the store grows (index and filter blocks of every new table), so
      the resident set is judged once that filling is over: from the first
      sample where RocksDB's memory reached 90 % of its highest, which must
      leave at least a third of the run (otherwise the verdict is "still
      filling: run longer"). RocksDB's own share is judged by staying
      within its cap, 256 MiB, plus 32 MiB for table readers. The resident
      set less RocksDB's current figure is printed, not judged: memory
      RocksDB frees stays with the C allocator (`heap free`), so that
      difference grows when RocksDB's figure dips while the resident set
      stays flat;
    * accounting exact — after a final `flush/0`, produced − persisted =
      dropped;
    * the number of backpressure level changes subscribers were sent.

      Causeway.Stress.Soak.run(minutes: 1, dir: "/tmp/soak")

  `mix causeway.stress soak --minutes N` runs it from the shell.
  """

  @doc "Runs the soak; returns `%{samples: [...], verdict: %{...}}` and prints as it goes."
  @spec run(keyword()) :: map()
  def run(opts) do
    minutes = Keyword.get(opts, :minutes, 10)
    every = Keyword.get(opts, :sample_s, 5)

    dir =
      Keyword.get(
        opts,
        :dir,
        Path.join(System.tmp_dir!(), "causeway-soak-#{System.unique_integer([:positive])}")
      )

    print = Keyword.get(opts, :print, &IO.puts/1)
    File.rm_rf!(dir)
    {:ok, pid} = Causeway.start_link(dir: dir)
    :ok = Causeway.subscribe(:backpressure)
    stop_at = System.monotonic_time(:millisecond) + round(minutes * 60_000)
    producers = for p <- 1..2, do: spawn_link(fn -> produce(p, stop_at) end)

    print.("soak: #{minutes} min, 2 producers flat out, defaults, store #{dir}")
    print.(header())
    samples = sample_loop(stop_at, every * 1_000, [], print)

    for p <- producers, do: Process.exit(p, :kill)
    Process.sleep(50)
    :ok = Causeway.flush(Causeway, 120_000)
    m = Causeway.metrics()
    changes = count_level_messages(0)
    Causeway.stop()
    Process.unlink(pid)
    File.rm_rf!(dir)

    verdict = verdict(samples, m, changes)
    print.(verdict_text(verdict))
    %{samples: samples, verdict: verdict}
  end

  defp produce(p, stop_at) do
    Stream.iterate(0, &(&1 + 1))
    |> Enum.each(fn i ->
      if rem(i, 1_000) == 0 and System.monotonic_time(:millisecond) > stop_at, do: exit(:normal)
      id = Causeway.Runtime.function_entry(Soak, :work, [p, i, %{k: i}])
      Causeway.Runtime.function_exit(id, {:ok, i})
    end)
  end

  defp sample_loop(stop_at, every, acc, print) do
    now = System.monotonic_time(:millisecond)

    if now >= stop_at do
      Enum.reverse(acc)
    else
      Process.sleep(min(every, max(stop_at - now, 0)))
      s = sample(length(acc) + 1)
      print.(row(s))
      sample_loop(stop_at, every, [s | acc], print)
    end
  end

  defp sample(n) do
    m = Causeway.metrics()

    %{
      n: n,
      t_s: div(m.uptime_ms, 1_000),
      beam: :erlang.memory(:total),
      native: m.native_memory,
      storage: Map.get(m, :storage_memory, 0),
      heap_free: get_in(m, [:heap, :free]) || 0,
      trimmed: get_in(m, [:heap, :trimmed]) || 0,
      rss: rss(),
      produced: m.produced,
      persisted: m.persisted,
      dropped: m.dropped_total,
      level: m.level
    }
  end

  @doc "The OS process's resident set in bytes (`VmRSS`), or 0 where /proc is missing."
  def rss do
    case File.read("/proc/self/status") do
      {:ok, text} ->
        case Regex.run(~r/VmRSS:\s+(\d+) kB/, text) do
          [_, kb] -> String.to_integer(kb) * 1024
          _ -> 0
        end

      _ ->
        0
    end
  end

  defp count_level_messages(n) do
    receive do
      {:causeway, :backpressure, _, _} -> count_level_messages(n + 1)
    after
      0 -> n
    end
  end

  defp header,
    do:
      "   #   t(s)   BEAM MB  native MB  rocksdb MB   RSS MB  heap free MB  trimmed MB     produced    persisted      dropped  level"

  defp row(s) do
    :io_lib.format("~4w ~6w ~9.1f ~10.1f ~11.1f ~8.1f ~13.1f ~11.1f ~12w ~12w ~12w  ~s", [
      s.n,
      s.t_s,
      s.beam / 1.0e6,
      s.native / 1.0e6,
      s.storage / 1.0e6,
      s.rss / 1.0e6,
      s.heap_free / 1.0e6,
      s.trimmed / 1.0e6,
      s.produced,
      s.persisted,
      s.dropped,
      Atom.to_string(s.level)
    ])
    |> IO.iodata_to_binary()
  end

  # RocksDB's cap (block cache, memtables charged to it) and 32 MiB for the
  # table readers outside it
  @rocksdb_bound 256 * 1024 * 1024 + 32 * 1024 * 1024

  @doc false
  # flat: last third within 5 % of the first third, after a warm-up
  def verdict(samples, final, level_changes) do
    warm = div(length(samples), 6)
    steady = Enum.drop(samples, warm)

    rocksdb_max = samples |> Enum.map(& &1.storage) |> Enum.max(fn -> 0 end)
    # the resident set, once RocksDB's memory has stopped filling
    filled = Enum.drop_while(samples, &(&1.storage < 0.9 * rocksdb_max))
    filled_long_enough = length(filled) >= max(div(length(samples), 3), 1)
    rss = Map.put(flat(filled, :rss), :from_s, Map.get(List.first(filled, %{}), :t_s, 0))
    rss = %{rss | flat: rss.flat and filled_long_enough}
    flat = %{beam: flat(steady, :beam), native: flat(steady, :native), rss: rss}

    less = Enum.map(steady, &Map.put(&1, :rss_less_rocksdb, &1.rss - &1.storage))

    %{
      flat: flat,
      still_filling: not filled_long_enough,
      rss_less_rocksdb: flat(less, :rss_less_rocksdb),
      rocksdb_max: rocksdb_max,
      rocksdb_bounded: rocksdb_max <= @rocksdb_bound,
      memory_flat: Enum.all?(flat, fn {_, v} -> v.flat end) and rocksdb_max <= @rocksdb_bound,
      produced: final.produced,
      persisted: final.persisted,
      dropped: final.dropped_total,
      exact: final.produced - final.persisted == final.dropped_total,
      level_changes: level_changes,
      samples: length(samples)
    }
  end

  defp flat(samples, key) do
    third = max(div(length(samples), 3), 1)
    first = mean(Enum.take(samples, third), key)
    last = mean(Enum.take(samples, -third), key)
    ratio = if first > 0, do: last / first, else: 1.0
    %{first: first, last: last, ratio: ratio, flat: ratio <= 1.05}
  end

  defp mean([], _), do: 0.0
  defp mean(xs, key), do: Enum.sum(Enum.map(xs, & &1[key])) / length(xs)

  defp verdict_text(v) do
    flat = Enum.map_join(v.flat, "; ", fn {k, f} -> "#{k} #{change(f)}" end)
    less = v.rss_less_rocksdb

    rss_window =
      if v.still_filling,
        do: "RocksDB still filling at the end: run longer to judge the resident set",
        else:
          "the resident set judged from #{v.flat.rss.from_s} s, once RocksDB's memory had filled"

    """
    verdict: memory #{if v.memory_flat, do: "FLAT", else: "GROWING"} (#{flat})
             #{rss_window}
             RocksDB at most #{mb(v.rocksdb_max)} MB: #{if v.rocksdb_bounded, do: "within", else: "OVER"} its 288 MB bound (256 MiB cache + table readers); RSS less RocksDB's current figure #{change(less)} (not judged: what RocksDB frees stays with the allocator)
             produced #{v.produced} − persisted #{v.persisted} = #{v.produced - v.persisted}; dropped #{v.dropped}: #{if v.exact, do: "EXACT", else: "MISMATCH"}
             backpressure level messages to subscribers: #{v.level_changes} over #{v.samples} samples
    """
  end

  defp change(f),
    do: "#{mb(f.first)} → #{mb(f.last)} MB (#{Float.round((f.ratio - 1) * 100, 1)} %)"

  defp mb(bytes), do: Float.round(bytes / 1.0e6, 1)
end
