defmodule Causeway.OverflowWaitTest do
  # overflow: :wait (issue 12 item 9): a CPU-bound producer much faster than
  # the writers records every event, and its normal scheduler never waits.
  use Causeway.Case, async: false

  alias Causeway.Runtime

  # a recursive encoder's shape: nested maps, lists and binaries
  defp payload(i),
    do: %{id: i, tags: [:a, :b, i], body: :binary.copy("x", rem(i, 200) + 10), nested: %{n: i}}

  defp produce(ms) do
    stop = System.monotonic_time(:millisecond) + ms

    Stream.iterate(0, &(&1 + 1))
    |> Enum.reduce_while(0, fn i, n ->
      if rem(i, 256) == 0 and System.monotonic_time(:millisecond) >= stop do
        {:halt, n}
      else
        id = Runtime.function_entry(Enc, :encode, [payload(i)])
        Runtime.function_exit(id, {:ok, i})
        # an exit is captured only for a captured entry
        {:cont, n + if(id, do: 2, else: 1)}
      end
    end)
  end

  test "a CPU-bound producer outrunning small rings loses nothing" do
    start_causeway!(overflow: :wait, ring_size: 1_024, shards: 2, workers: {1, 2})

    {produced, pid, long} =
      in_process(fn ->
        :erlang.system_monitor(self(), [{:long_schedule, 5}])
        n = produce(1_500)
        :erlang.system_monitor(:undefined)

        long =
          receive do
            {:monitor, pid, :long_schedule, info} when pid == self() -> info
          after
            100 -> nil
          end

        {n, self(), long}
      end)

    flush!()
    m = Causeway.metrics()
    {stored, _index} = Causeway.Query.count(pid: pid, limit: :infinity)
    assert m.dropped_total == 0, inspect(m.dropped)
    assert stored == produced
    assert produced > 10_000
    assert long == nil, "the producer's scheduler was held: #{inspect(long)}"
  end

  test "with the default policy the same producer loses events (the test can fail)" do
    start_causeway!(ring_size: 1_024, shards: 2, workers: {1, 1}, flush_interval_ms: 50)

    {produced, pid} = in_process(fn -> {produce(500), self()} end)
    flush!()
    {stored, _} = Causeway.Query.count(pid: pid, limit: :infinity)
    assert stored + Causeway.metrics().dropped_total == produced
    assert stored < produced
  end

  test "an unknown overflow policy names the three" do
    assert_raise ArgumentError, ~r/:drop_newest, :drop_oldest or :wait/, fn ->
      Causeway.start_link(overflow: :block)
    end
  end
end
