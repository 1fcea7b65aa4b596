defmodule Causeway.StressTest do
  # Issue 16 items 4 and 6, short versions (mix causeway.stress for long ones).
  use Causeway.Case, async: false

  @moduletag timeout: 1_200_000

  test "crash loop: child VMs killed with SIGKILL at random moments lose nothing flushed" do
    default = if System.get_env("CI"), do: "8", else: "30"
    n = String.to_integer(System.get_env("CAUSEWAY_CRASH_ITERATIONS", default))
    dir = tmp_dir!("crash")

    r = Causeway.Stress.CrashLoop.run(dir: dir, iterations: n, log: &IO.puts("  " <> &1))
    IO.puts("  crash loop: #{inspect(r)}")
    assert r.iterations == n
    assert r.failed_opens == 0
    assert r.losses == 0
    assert r.flushed > 0
  end

  test "the soak's verdict: RocksDB's cache may fill to its cap, then the resident set must stay flat" do
    mb = 1_000_000
    final = %{produced: 10, persisted: 7, dropped_total: 3}

    samples = fn rest_of_rss, rocksdb ->
      for i <- 1..60,
          do: %{
            t_s: 5 * i,
            beam: 28 * mb,
            native: 17 * mb,
            storage: rocksdb.(i),
            rss: rest_of_rss.(i) + rocksdb.(i)
          }
    end

    # fills for 20 samples, then stays near its cap, dipping as RocksDB does
    filling = fn i -> min(50 + 8 * i, 210 - rem(i, 3) * 10) * mb end
    v = Causeway.Stress.Soak.verdict(samples.(fn _ -> 120 * mb end, filling), final, 0)
    assert v.memory_flat and v.rocksdb_bounded and v.exact
    # 90 % of its highest (210 MB) at sample 18
    assert v.flat.rss.from_s == 5 * 18

    # what RocksDB frees stays with the allocator: the resident set is flat
    # while RocksDB's figure falls, and that is not growth
    falling = fn i -> if i <= 20, do: (50 + 8 * i) * mb, else: (210 - i) * mb end
    kept = fn i -> if i <= 20, do: 120 * mb, else: (120 + i - 20) * mb end
    v = Causeway.Stress.Soak.verdict(samples.(kept, falling), final, 0)
    assert v.memory_flat
    assert v.rss_less_rocksdb.ratio > 1.05

    # the rest of the resident set grows
    v = Causeway.Stress.Soak.verdict(samples.(fn i -> (120 + i) * mb end, filling), final, 0)
    refute v.memory_flat

    # RocksDB still filling at the end: the resident set cannot be judged
    v =
      Causeway.Stress.Soak.verdict(
        samples.(fn _ -> 120 * mb end, &((50 + 3 * &1) * mb)),
        final,
        0
      )

    assert v.still_filling
    refute v.memory_flat

    # RocksDB over its bound
    v =
      Causeway.Stress.Soak.verdict(
        samples.(fn _ -> 120 * mb end, &(min(50 + 15 * &1, 320) * mb)),
        final,
        0
      )

    refute v.rocksdb_bounded or v.memory_flat
  end

  test "a short soak: accounting is exact and the table is printed" do
    lines = :ets.new(:lines, [:public, :duplicate_bag])

    %{verdict: v, samples: samples} =
      Causeway.Stress.Soak.run(
        minutes: 0.25,
        sample_s: 3,
        dir: tmp_dir!("soak"),
        print: &:ets.insert(lines, {:l, &1})
      )

    printed = for {:l, l} <- :ets.tab2list(lines), do: l
    assert Enum.any?(printed, &(&1 =~ "verdict: memory"))
    assert length(samples) >= 3
    assert v.exact, inspect(v)
    assert v.produced > 0 and v.persisted > 0
  end
end
