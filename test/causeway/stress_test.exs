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
