defmodule Causeway.QueryTest do
  use Causeway.Case, async: false

  alias Causeway.Runtime

  # A workload of several processes, modules and event types; returns what was
  # written so each filter can be checked against a brute-force expectation.
  defp workload do
    procs =
      for p <- 1..3 do
        Task.async(fn ->
          for i <- 1..40 do
            mod = Enum.at([Alpha, Beta], rem(i, 2))
            fun = Enum.at([:one, :two, :three], rem(i, 3))
            args = Enum.take([p, i, :x], rem(i, 3) + 1)
            id = Runtime.function_entry(mod, fun, args)
            if rem(i, 4) == 0, do: Runtime.state_change(i - 4, i)
            Runtime.function_exit(id, i)
          end

          self()
        end)
      end
      |> Task.await_many()

    flush!()
    procs
  end

  setup do
    start_causeway!()
    :ok
  end

  test "events are complete structs: a UTC DateTime and every field in place" do
    before = vm_now()
    id = Runtime.function_entry(Alpha, :one, [1, "two"])
    Runtime.state_change(%{n: 1}, %{n: 2})
    Runtime.function_exit(id, :done)
    flush!()
    later = vm_now()

    [entry, change, exit] = Causeway.events(pid: self())
    assert %Causeway.Event{type: :function_entry, module: Alpha, function: :one, arity: 2} = entry
    assert entry.data == [1, "two"] and entry.call_id == id and entry.pid == self()
    assert entry.node == node() and entry.source == :runtime
    assert change.data == %{old: %{n: 1}, new: %{n: 2}}
    assert exit.data == :done and exit.call_id == id and exit.parent_id == id
    assert change.parent_id == id and entry.parent_id == nil

    for e <- [entry, change, exit] do
      us = DateTime.to_unix(e.wall_time, :microsecond)
      # the same DateTime as Elixir's own, field for field
      assert e.wall_time == DateTime.from_unix!(us, :microsecond)
      assert DateTime.compare(e.wall_time, DateTime.add(before, -1, :millisecond)) == :gt
      assert DateTime.compare(e.wall_time, DateTime.add(later, 1, :millisecond)) == :lt
      assert is_integer(e.timestamp)
    end
  end

  test "wall times of events within one second and across seconds are whole DateTimes" do
    # the NIF builds a DateTime of the same second as the last one's map with
    # another microsecond: check both paths, field for field
    for i <- 1..60 do
      Runtime.function_exit(Runtime.function_entry(Alpha, :one, [i]), i)
      if rem(i, 4) == 0, do: Process.sleep(80)
    end

    flush!()
    evs = Causeway.events(pid: self(), limit: :infinity)
    assert length(evs) == 120
    seconds = evs |> Enum.map(&DateTime.to_unix(&1.wall_time)) |> Enum.uniq()
    assert length(seconds) >= 2

    for e <- evs do
      us = DateTime.to_unix(e.wall_time, :microsecond)
      assert e.wall_time == DateTime.from_unix!(us, :microsecond)
      assert Map.keys(e.wall_time) == Map.keys(DateTime.from_unix!(us, :microsecond))
    end

    # wall time less monotonic time is the same for every event of a run:
    # no event has the microsecond of another
    offsets =
      Enum.map(evs, &(DateTime.to_unix(&1.wall_time, :microsecond) - div(&1.timestamp, 1000)))

    [offset | _] = offsets
    assert Enum.all?(offsets, &(abs(&1 - offset) <= 2)), inspect(Enum.uniq(offsets))
  end

  test "every filter alone and combined matches a brute-force expectation" do
    procs = workload()
    all = Causeway.events(limit: :infinity)
    assert length(all) == 3 * (40 * 2 + 10)
    assert Enum.map(all, & &1.id) == Enum.sort(Enum.map(all, & &1.id))
    [p1, p2 | _] = procs
    mid = Enum.at(all, 100)
    # (the event at 100 may be a state change, which has no call id: a nil
    # call_id is no filter at all, so the call is the first one from there)
    call = all |> Enum.drop(100) |> Enum.find(& &1.call_id)

    filters = [
      [pid: p1],
      [type: :state_change],
      [type: [:function_exit, :state_change]],
      [module: Alpha],
      [module: Beta, function: :two],
      [module: Beta, function: :two, arity: 2],
      [module: Beta, function: :two, arity: 3],
      [function: :three],
      [pid: p2, module: Alpha, type: :function_exit],
      [since: mid.wall_time],
      [until: mid.wall_time],
      [since: mid.timestamp, pid: p2],
      [call_id: call.call_id],
      [pid: p1, type: :function_entry, module: Beta, function: :one]
    ]

    for f <- filters do
      expected = Enum.filter(all, &matches?(&1, f)) |> Enum.map(& &1.id)
      got = Causeway.events(f ++ [limit: :infinity]) |> Enum.map(& &1.id)
      assert got == expected, "filter #{inspect(f)}: #{length(got)} vs #{length(expected)}"

      assert expected != [] or f == [module: Beta, function: :two, arity: 3],
             "filter #{inspect(f)} should match something"

      desc = Causeway.events(f ++ [limit: :infinity, order: :desc]) |> Enum.map(& &1.id)
      assert desc == Enum.reverse(expected)
      limited = Causeway.events(f ++ [limit: 3]) |> Enum.map(& &1.id)
      assert limited == Enum.take(expected, 3)
    end
  end

  defp matches?(e, filters) do
    Enum.all?(filters, fn
      {:pid, p} -> e.pid == p
      {:type, ts} when is_list(ts) -> e.type in ts
      {:type, t} -> e.type == t
      {:module, m} -> e.module == m
      {:function, f} -> e.function == f
      {:arity, a} -> e.arity == a
      {:call_id, c} -> e.call_id == c
      {:since, %DateTime{} = t} -> DateTime.compare(e.wall_time, t) != :lt
      {:until, %DateTime{} = t} -> DateTime.compare(e.wall_time, t) != :gt
      {:since, mono} -> e.timestamp >= mono
    end)
  end

  test "another node's pid with this process's number and serial matches none of its events" do
    id = Runtime.function_entry(Alpha, :one, [1])
    Runtime.state_change(:a, :b)
    Runtime.function_exit(id, :ok)
    flush!()

    # <0.N.S> of this process, as the pid of a node that never wrote here
    # (stores of several nodes opened together hold each other's numbers)
    [n, s] =
      self()
      |> :erlang.pid_to_list()
      |> to_string()
      |> then(&Regex.run(~r/<0\.(\d+)\.(\d+)>/, &1, capture: :all_but_first))

    node = "other@host"

    twin =
      :erlang.binary_to_term(
        <<131, 88, 119, byte_size(node)::8, node::binary, String.to_integer(n)::32,
          String.to_integer(s)::32, 1::32>>
      )

    assert length(Causeway.events(pid: self())) == 3
    assert Causeway.events(pid: twin) == []
    assert Causeway.state_history(twin) == []
    assert [_] = Causeway.state_history(self())
  end

  test "time bounds far in the past or future are clamped, not wrapped" do
    workload()
    all = Causeway.events(limit: :infinity) |> Enum.map(& &1.id)
    far = ~U[2300-01-01 00:00:00Z]
    farther = ~U[9999-12-31 23:59:59Z]
    assert Enum.map(Causeway.events(until: far, limit: :infinity), & &1.id) == all
    assert Enum.map(Causeway.events(until: farther, limit: :infinity), & &1.id) == all
    assert Causeway.events(since: far, limit: :infinity) == []

    assert Enum.map(Causeway.events(since: ~U[1900-01-01 00:00:00Z], limit: :infinity), & &1.id) ==
             all

    [%{pid: pid} | _] = Causeway.events(type: :state_change, limit: 1)
    assert {:ok, _state, _event} = Causeway.state_at(pid, farther)
  end

  defp nest(0), do: :ok

  defp nest(n) do
    id = Runtime.function_entry(Deep, :down, [n])
    nest(n - 1)
    Runtime.function_exit(id, n)
  end

  test "call_tree of a recursion deeper than any native stack" do
    depth = 20_000
    nest(depth)
    flush!()
    [root] = Causeway.events(type: :function_entry, limit: 1)

    tree = Causeway.call_tree(root.call_id, max_nodes: depth)
    {levels, last} = Stream.iterate(tree, &List.first(&1.children)) |> count_levels(0)
    assert levels == depth
    assert last.entry.data == [1] and last.result == 1
    assert tree.result == depth

    # the node budget cuts the tree, never the VM
    small = Causeway.call_tree(root.call_id, max_nodes: 100)
    assert {101, _} = Stream.iterate(small, &List.first(&1.children)) |> count_levels(0)
  end

  defp count_levels(stream, _) do
    stream
    |> Stream.take_while(&(&1 != nil))
    |> Enum.reduce({0, nil}, fn node, {n, _} -> {n + 1, node} end)
  end

  test "a process's big states and arguments come back whole from its pid query" do
    # events over 256 bytes are listed by reference in the covering pid
    # index and read by id; small ones are read from the list itself
    {pid, states} =
      Task.async(fn ->
        states =
          for i <- 1..60 do
            state = %{i: i, blob: :binary.copy(<<i>>, rem(i * 97, 1500))}
            id = Runtime.function_entry(Alpha, :one, [state])
            Runtime.state_change(%{i: i - 1}, state)
            Runtime.function_exit(id, {:ok, i})
            state
          end

        {self(), states}
      end)
      |> Task.await()

    flush!()
    by_pid = Causeway.events(pid: pid, limit: :infinity)
    scanned = Causeway.events(limit: :infinity) |> Enum.filter(&(&1.pid == pid))
    assert length(by_pid) == 180
    assert by_pid == scanned
    assert Causeway.events(pid: pid, limit: :infinity, order: :desc) == Enum.reverse(by_pid)
    assert Enum.map(by_pid, &Causeway.event(&1.id)) == by_pid

    assert for(%{type: :state_change, data: %{new: new}} <- by_pid, do: new) == states
    assert for(%{type: :function_entry, data: [a]} <- by_pid, do: a) == states
  end

  test "pagination neither skips nor repeats" do
    workload()
    all = Causeway.events(limit: :infinity) |> Enum.map(& &1.id)

    for size <- [1, 7, 50, 1000] do
      streamed = Causeway.stream_events(page_size: size) |> Enum.map(& &1.id)
      assert streamed == all
      desc = Causeway.stream_events(page_size: size, order: :desc) |> Enum.map(& &1.id)
      assert desc == Enum.reverse(all)
    end

    assert Causeway.stream_events(page_size: 7, limit: 20, type: :state_change) |> Enum.count() ==
             20

    # the explicit cursor
    first = Causeway.events(limit: 10)
    next = Causeway.events(limit: 10, after: List.last(first).id)
    assert Enum.map(first ++ next, & &1.id) == Enum.take(all, 20)
  end

  test "state_at before, between and after changes" do
    {:ok, pid} = Agent.start_link(fn -> :ok end)

    change = fn old, new ->
      Agent.get(pid, fn _ ->
        Runtime.state_change(old, new)
        :ok
      end)

      Process.sleep(5)
    end

    before = vm_now()
    Process.sleep(5)
    change.(nil, :a)
    between = vm_now()
    Process.sleep(5)
    change.(:a, :b)
    change.(:b, :c)
    flush!()
    after_all = vm_now()

    assert Causeway.state_at(pid, before) == :none
    assert {:ok, :a, _} = Causeway.state_at(pid, between)
    assert {:ok, :c, ev} = Causeway.state_at(pid, after_all)
    assert ev.data.old == :b
    # at exactly the time of a change, that change counts
    [_, second, _] = Causeway.state_history(pid)
    assert {:ok, :b, ^second} = Causeway.state_at(pid, second.wall_time)
    assert {:ok, :b, _} = Causeway.state_at(pid, second.timestamp)

    assert [%{data: %{new: :b}}] =
             Causeway.state_history(pid, since: second.wall_time, until: second.wall_time)

    # the limit applies after the time window, and reading stops there
    assert [%{data: %{new: :b}}] = Causeway.state_history(pid, since: second.wall_time, limit: 1)
    assert length(Causeway.state_history(pid, limit: :infinity)) == 3

    assert_raise ArgumentError, ~r/:limit must be a positive integer or :infinity/, fn ->
      Causeway.state_history(pid, limit: -1)
    end
  end

  test "message_flow stops at its limit and keeps the oldest" do
    parent = self()

    b =
      spawn(fn ->
        receive do
          :go -> send(parent, :done)
        end
      end)

    for i <- 1..5, do: Runtime.message_send(b, {:n, i})
    for i <- 6..8, do: Runtime.message_send(parent, {:n, i})
    flush!()

    all = Causeway.message_flow(self(), b)
    assert Enum.map(all, & &1.send.data.message) == for(i <- 1..5, do: {:n, i})

    assert Enum.map(Causeway.message_flow(self(), b, limit: 2), & &1.send.data.message) ==
             [{:n, 1}, {:n, 2}]

    assert length(Causeway.message_flow(self(), b, limit: :infinity)) == 5

    assert_raise ArgumentError, ~r/:limit/, fn ->
      Causeway.message_flow(self(), b, limit: :all)
    end

    send(b, :go)
  end

  test "tree and chain sizes take a count or :infinity and nothing else" do
    id = Runtime.function_entry(Alpha, :one, [1])
    Runtime.function_exit(id, :ok)
    flush!()
    assert %Causeway.CallTree{} = Causeway.call_tree(id, max_nodes: :infinity)
    assert [{_, nil} | _] = Causeway.causal_chain(id, max: :infinity)
    assert_raise ArgumentError, ~r/:max_nodes/, fn -> Causeway.call_tree(id, max_nodes: -5) end
    assert_raise ArgumentError, ~r/:max /, fn -> Causeway.causal_chain(id, max: "3") end
  end

  test "causal_chain crosses three processes: state change ← message ← sender's call ← ..." do
    parent = self()

    c =
      spawn(fn ->
        receive do
          {:bump, n} = msg ->
            Runtime.message_receive(msg)
            Runtime.state_change(0, n)
            send(parent, :done)
        end
      end)

    b =
      spawn(fn ->
        receive do
          {:relay, n} = msg ->
            Runtime.message_receive(msg)
            id = Runtime.function_entry(Relay, :forward, [n])
            Runtime.message_send(c, {:bump, n})
            send(c, {:bump, n})
            Runtime.function_exit(id, :ok)
        end
      end)

    id = Runtime.function_entry(Origin, :start, [])
    Runtime.message_send(b, {:relay, 42})
    send(b, {:relay, 42})
    Runtime.function_exit(id, :ok)
    assert_receive :done, 5_000
    flush!()

    [sc] = Causeway.events(pid: c, type: :state_change)
    chain = Causeway.causal_chain(sc.id)

    assert Enum.map(chain, fn {e, via} -> {e.type, e.pid, via} end) == [
             {:state_change, c, nil},
             {:message_receive, c, :caused_by},
             {:message_send, b, :receives},
             {:function_entry, b, :caused_by},
             {:message_receive, b, :caused_by},
             {:message_send, self(), :receives},
             {:function_entry, self(), :caused_by}
           ]

    [flow] = Causeway.message_flow(b, c)
    assert flow.send.data.message == {:bump, 42}
    assert flow.receive.pid == c
  end
end
