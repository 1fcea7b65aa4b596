defmodule Causeway.RetentionTest do
  use Causeway.Case, async: false

  alias Causeway.Runtime

  test "retention by age removes exactly the older events, indexes included" do
    start_causeway!(retention: [max_age: 300, interval_ms: 60_000])
    old = for i <- 1..50, do: Runtime.function_entry(Old, :call, [i])
    for id <- Enum.reverse(old), do: Runtime.function_exit(id, :ok)
    Runtime.state_change(:old, :state)
    flush!()
    Process.sleep(400)
    new = for i <- 1..20, do: Runtime.function_entry(New, :call, [i])
    for id <- Enum.reverse(new), do: Runtime.function_exit(id, :ok)
    flush!()

    assert {:ok, %{events: 101}} = Causeway.enforce_retention()
    remaining = Causeway.events(limit: :infinity)
    assert length(remaining) == 40
    assert Enum.all?(remaining, &(&1.module == New))
    # no index still points at a deleted event
    assert Causeway.events(module: Old) == []
    assert Causeway.events(type: :state_change) == []
    assert Causeway.state_history(self()) == []
    assert Causeway.events(pid: self(), limit: :infinity) |> length() == 40
    assert Causeway.event(hd(old)) == nil
    assert Causeway.metrics().retention_deleted == 101
  end

  test "the covering pid index answers like the id index, across reopen and retention" do
    dir = tmp_dir!()
    start_causeway!(dir: dir, covering_pid_index: false, retention: [max_age: 300])
    old = for i <- 1..30, do: Runtime.function_entry(Old, :call, [i])
    for id <- Enum.reverse(old), do: Runtime.function_exit(id, :ok)
    flush!()
    stop_causeway!()

    # reopened with the covering format (the default): the old id lists and
    # the new covering lists are read side by side
    start_causeway!(dir: dir, retention: [max_age: 300])
    Process.sleep(400)
    new = for i <- 1..20, do: Runtime.function_entry(New, :call, [i])
    for id <- Enum.reverse(new), do: Runtime.function_exit(id, :ok)
    flush!()

    mine = Causeway.events(pid: self(), limit: :infinity)
    assert length(mine) == 100
    assert mine == Enum.sort_by(Causeway.events(limit: :infinity), & &1.id)
    assert Enum.map(mine, & &1.id) == Enum.sort(Enum.map(mine, & &1.id))
    [first_new | _] = Causeway.events(pid: self(), module: New, limit: 1)
    assert first_new.id == hd(new)
    assert first_new.data == [1]

    assert {:ok, %{events: 60}} = Causeway.enforce_retention()
    left = Causeway.events(pid: self(), limit: :infinity)
    assert length(left) == 40
    assert Enum.all?(left, &(&1.module == New))
  end

  test "bad covering_pid_index is refused" do
    assert_raise ArgumentError, ~r/covering_pid_index/, fn ->
      Causeway.start_link(covering_pid_index: :yes)
    end
  end

  test "retention runs in the background at its interval" do
    start_causeway!(retention: [max_age: {1, :second}, interval_ms: 200])
    Runtime.state_change(:a, :b)
    flush!()
    Process.sleep(1_500)
    assert Causeway.events() == []
    assert Causeway.metrics().retention_runs >= 2
  end

  test "bad retention options are refused" do
    assert_raise ArgumentError, ~r/max_age/, fn ->
      Causeway.start_link(retention: [max_age: {1, :fortnight}])
    end

    assert_raise ArgumentError, ~r/max_bytes/, fn ->
      Causeway.start_link(retention: [max_bytes: -1])
    end

    assert_raise ArgumentError, ~r/interval_ms/, fn ->
      Causeway.start_link(retention: [interval_ms: 1])
    end
  end
end
