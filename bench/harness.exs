defmodule Causeway.Bench do
  @moduledoc """
  A small benchmark harness (no Benchee here): each case runs `warmup` times,
  then `runs` rounds in which every case runs once, back to back; we report
  the median and the min–max of the runs and the ratio of each case's median
  to the baseline's, all measured in the same run (these machines are shared
  and noisy: compare ratios, quote medians). Interleaved rounds keep a change
  of the machine's speed from landing on one case only; `paired_ratio/3`
  gives the median of the per-round ratios of two cases.
  """

  @doc """
  `cases` is `[{name, fun}]`; `fun.()` does one run and returns
  `{units_done, elapsed_ns}` (so a case can time only the part it measures).
  The first case is the baseline. Returns the rows.
  """
  def compare(title, cases, opts \\ []) do
    warmup = Keyword.get(opts, :warmup, 1)
    runs = Keyword.get(opts, :runs, 5)
    unit = Keyword.get(opts, :unit, "event")

    for {_name, fun} <- cases, _ <- 1..warmup//1, do: fun.()

    rounds = for _ <- 1..runs, do: Enum.map(cases, fn {_name, fun} -> per_unit(fun.()) end)

    rows =
      cases
      |> Enum.with_index()
      |> Enum.map(fn {{name, _fun}, i} ->
        samples = Enum.map(rounds, &Enum.at(&1, i))
        sorted = Enum.sort(samples)

        %{
          name: name,
          median: median(sorted),
          min: hd(sorted),
          max: List.last(sorted),
          samples: samples
        }
      end)

    base = hd(rows).median

    IO.puts(
      "\n## #{title}  (#{runs} interleaved rounds after #{warmup} warm-up; ns per #{unit}; lower is better)"
    )

    IO.puts(
      String.pad_trailing("case", 52) <>
        String.pad_leading("median", 12) <>
        String.pad_leading("min–max", 22) <>
        String.pad_leading("per s", 14) <> String.pad_leading("× baseline", 12)
    )

    for r <- rows do
      IO.puts(
        String.pad_trailing(r.name, 52) <>
          String.pad_leading(fmt(r.median), 12) <>
          String.pad_leading("#{fmt(r.min)}–#{fmt(r.max)}", 22) <>
          String.pad_leading(rate(r.median), 14) <>
          String.pad_leading(:erlang.float_to_binary(r.median / base, decimals: 2), 12)
      )
    end

    rows
  end

  @doc "The median over rounds of `slow`'s time divided by `fast`'s, from `compare`'s rows."
  def paired_ratio(rows, slow, fast) do
    by = Map.new(rows, &{&1.name, &1.samples})

    Enum.zip_with(by[slow], by[fast], &(&1 / &2))
    |> Enum.sort()
    |> median()
  end

  defp per_unit({units, ns}) when units > 0, do: ns / units
  defp median(sorted), do: Enum.at(sorted, div(length(sorted), 2))
  defp fmt(x), do: :erlang.float_to_binary(x * 1.0, decimals: 1)
  defp rate(ns), do: Integer.to_string(round(1.0e9 / ns))

  @doc "Times `fun` in ns."
  def time(fun) do
    t0 = System.monotonic_time(:nanosecond)
    r = fun.()
    {r, System.monotonic_time(:nanosecond) - t0}
  end

  @doc "Runs `fun` in `procs` processes at once; returns the elapsed ns of the slowest."
  def parallel_runs(procs, fun) do
    parent = self()

    pids =
      for _ <- 1..procs do
        spawn_link(fn ->
          receive do
            :go -> :ok
          end

          fun.()
          send(parent, {:done, self()})
        end)
      end

    {_, ns} =
      time(fn ->
        Enum.each(pids, &send(&1, :go))
        for pid <- pids, do: receive(do: ({:done, ^pid} -> :ok))
      end)

    ns
  end

  def tmp_dir(tag) do
    dir =
      Path.join(System.tmp_dir!(), "causeway-bench-#{tag}-#{System.unique_integer([:positive])}")

    File.rm_rf!(dir)
    dir
  end
end
