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

  test "the soak's verdict: RocksDB's cache may fill to its cap, the rest must stay flat" do
    mb = 1_000_000
    final = %{produced: 10, persisted: 7, dropped_total: 3}

    samples = fn rest_of_rss, rocksdb ->
      for i <- 1..60,
          do: %{
            beam: 28 * mb,
            native: 17 * mb,
            storage: rocksdb.(i),
            rss: rest_of_rss.(i) + rocksdb.(i)
          }
    end

    filling = fn i -> (50 + 3 * i) * mb end
    v = Causeway.Stress.Soak.verdict(samples.(fn _ -> 120 * mb end, filling), final, 0)
    assert v.memory_flat and v.rocksdb_bounded and v.exact

    v = Causeway.Stress.Soak.verdict(samples.(fn i -> (120 + i) * mb end, filling), final, 0)
    refute v.memory_flat

    v =
      Causeway.Stress.Soak.verdict(
        samples.(fn _ -> 120 * mb end, &((50 + 5 * &1) * mb)),
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
