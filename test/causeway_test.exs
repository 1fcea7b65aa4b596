defmodule CausewayTest do
  # The walking skeleton's acceptance: an event's whole journey.
  use Causeway.Case, async: false

  alias Causeway.Runtime

  test "an event is written, flushed, and read back after a restart on the same directory" do
    {_pid, dir} = start_causeway!()
    call_id = Runtime.function_entry(Demo.Mod, :work, [1, "two", %{three: 3}])
    assert is_integer(call_id) and call_id > 0
    :ok = Runtime.function_exit(call_id, {:ok, 6})
    flush!()
    stop_causeway!()

    # a new instance on the same directory finds it on disk
    start_causeway!(dir: dir)
    [entry, exit] = Causeway.events(pid: self())
    assert entry.type == :function_entry
    assert entry.id == call_id and entry.call_id == call_id
    assert entry.module == Demo.Mod and entry.function == :work and entry.arity == 3
    assert entry.data == [1, "two", %{three: 3}]
    assert entry.pid == self() and entry.node == node()
    assert %DateTime{} = entry.wall_time
    assert exit.type == :function_exit
    assert exit.data == {:ok, 6}
    assert exit.call_id == call_id and exit.parent_id == call_id
    assert exit.module == Demo.Mod and exit.function == :work

    # the exit is linked to its entry, both ways
    assert {:completes, call_id} in exit.links
    assert {:completed_by, exit.id} in entry.links

    # new ids stay above the stored ones after the restart
    later = Runtime.function_entry(Demo.Mod, :again, [])
    assert later > exit.id
  end

  test "a store opened read-only after the instance stopped answers queries" do
    {_pid, dir} = start_causeway!()
    id = Runtime.function_entry(Demo.Mod, :work, [])
    Runtime.function_exit(id, :done)
    flush!()
    stop_causeway!()

    {:ok, store} = Causeway.open(dir, read_only: true)

    assert [%{type: :function_entry}, %{type: :function_exit, data: :done}] =
             Causeway.events(store: store, pid: self())

    assert Causeway.event(id, store: store).id == id
    assert Causeway.event(12_345, store: store) == nil
    assert :ok = Causeway.close(store)
    assert_raise Causeway.Error, ~r/closed/, fn -> Causeway.events(store: store) end
  end

  test "events of many concurrent processes are all stored when the rings are big enough" do
    start_causeway!(ring_size: 65_536)
    procs = 8
    per = 2_000

    pids =
      for p <- 1..procs do
        Task.async(fn ->
          for i <- 1..per do
            id = Runtime.function_entry(Demo.Mod, :step, [p, i])
            Runtime.function_exit(id, i)
          end

          self()
        end)
      end
      |> Task.await_many(60_000)

    flush!()
    m = Causeway.metrics()
    assert m.produced == procs * per * 2
    assert m.persisted == procs * per * 2
    assert m.dropped_total == 0

    for pid <- pids do
      events = Causeway.events(pid: pid, limit: :infinity, links: false)
      assert length(events) == per * 2
      assert Enum.count(events, &(&1.type == :function_exit)) == per
    end

    assert m.correlation_success_rate == 1.0
  end

  test "metrics show the process's C heap, sampled by the manager thread" do
    start_causeway!()
    # the manager samples once a second (process-wide, at most every 5 s)
    Process.sleep(1_500)
    heap = Causeway.metrics().heap
    assert Map.keys(heap) |> Enum.sort() == [:free, :in_use, :trimmed, :trims]
    # glibc here: the rings alone are megabytes of heap
    assert heap.in_use > 1_000_000
    assert heap.trimmed >= 0 and heap.trims >= 0
  end

  test "drops are counted exactly when the rings are too small" do
    # one shard, a tiny ring and a long flush interval: the writer cannot keep up
    start_causeway!(
      ring_size: 64,
      shards: 1,
      workers: {1, 1},
      flush_interval_ms: 1_000,
      batch_size: 16,
      emergency_sample: 1
    )

    n = 5_000
    for i <- 1..n, do: Runtime.message_send(self(), {:tick, i})
    flush!()
    m = Causeway.metrics()
    stored = length(Causeway.events(type: :message_send, limit: :infinity, links: false))
    assert m.produced == n
    assert m.dropped_total > 0
    assert m.persisted == stored
    assert m.dropped_total + stored == n
    assert m.dropped.ring_full == m.dropped_total
  end

  test "payloads beyond the memory budget are refused and counted, small events still pass" do
    start_causeway!(ring_size: 1024, shards: 1)
    slots = Causeway.metrics().native_memory
    stop_causeway!()

    # room for about ten 4 KB payloads beyond the slots
    start_causeway!(
      ring_size: 1024,
      shards: 1,
      max_term_bytes: 8192,
      memory_budget: slots + 40_000
    )

    assert Causeway.metrics().memory_budget == slots + 40_000
    h = Causeway.Instance.handle!()
    Causeway.Native.pipeline_inject(h, :pause, 1)
    big = :binary.copy("x", 4_000)
    for i <- 1..50, do: Runtime.message_send(self(), {:big, i, big})
    for i <- 1..50, do: Runtime.message_send(self(), {:small, i})
    m = Causeway.metrics()
    assert m.dropped.memory_budget >= 39 and m.dropped.memory_budget <= 41
    assert m.native_memory <= m.memory_budget
    Causeway.Native.pipeline_inject(h, :pause, 0)
    flush!()

    m = Causeway.metrics()
    stored = Causeway.events(type: :message_send, limit: :infinity, links: false)
    assert m.produced == 100
    assert m.produced - m.persisted == m.dropped_total
    assert m.dropped_total == m.dropped.memory_budget
    assert length(stored) == 100 - m.dropped_total
    assert Enum.count(stored, &match?({:small, _}, &1.data.message)) == 50
    # the big ones kept are the first ones (drop-newest)
    bigs = for %{data: %{message: {:big, i, _}}} <- stored, do: i
    assert bigs == Enum.to_list(1..length(bigs))
  end

  test "a memory budget the ring slots alone exceed is refused" do
    assert {:error, %Causeway.Error{message: msg}} =
             Causeway.start_link(dir: tmp_dir!("budget"), ring_size: 1024, memory_budget: 1000)

    assert msg =~ "memory_budget (1000 B) must exceed the ring slots and the context table"
  end

  test "the drop-oldest policy keeps the newest events and counts the overwritten ones" do
    start_causeway!(
      ring_size: 64,
      shards: 1,
      workers: {1, 1},
      flush_interval_ms: 1_000,
      overflow: :drop_oldest,
      emergency_sample: 1
    )

    n = 3_000
    for i <- 1..n, do: Runtime.message_send(self(), {:tick, i})
    flush!()
    m = Causeway.metrics()
    stored = Causeway.events(type: :message_send, limit: :infinity, links: false)
    assert m.dropped.overwritten + length(stored) == n
    assert m.dropped.ring_full == 0
    # the very last event survived
    assert List.last(stored).data.message == {:tick, n}
  end

  import Bitwise

  describe "bad input gets a clear error, never a crash" do
    test "start_link options" do
      assert_raise ArgumentError, ~r/ring_size must be a power of two/, fn ->
        Causeway.start_link(ring_size: 1000)
      end

      assert_raise ArgumentError, ~r/workers/, fn -> Causeway.start_link(workers: {3, 2}) end
      assert_raise ArgumentError, ~r/overflow/, fn -> Causeway.start_link(overflow: :explode) end
      assert_raise ArgumentError, ~r/unknown option :nope/, fn -> Causeway.start_link(nope: 1) end
      assert_raise ArgumentError, ~r/:dir/, fn -> Causeway.start_link(dir: 42) end
      assert_raise ArgumentError, ~r/redact/, fn -> Causeway.start_link(redact: ["password"]) end

      assert_raise ArgumentError, ~r/max_depth must be an integer in 1..1000/, fn ->
        Causeway.start_link(max_depth: 100_000)
      end

      assert_raise ArgumentError, ~r/max_term_bytes must be an integer in/, fn ->
        Causeway.start_link(max_term_bytes: 1 <<< 33)
      end
    end

    test "public functions name what was wrong" do
      assert_raise ArgumentError, ~r/capture\/2 expects true or false/, fn ->
        Causeway.capture(:global, :yes)
      end

      assert_raise ArgumentError, ~r/:backpressure, :health or :incident/, fn ->
        Causeway.subscribe(:everything)
      end

      assert_raise ArgumentError, ~r/:read_only must be true or false/, fn ->
        Causeway.open(tmp_dir!("ro"), read_only: "true")
      end

      assert_raise ArgumentError, ~r/close\/1 expects a store/, fn -> Causeway.close(:nope) end

      assert_raise ArgumentError, ~r/process_tree\/1 expects a pid/, fn ->
        Causeway.process_tree(1)
      end

      assert_raise ArgumentError, ~r/:max_depth/, fn ->
        Causeway.process_tree(self(), max_depth: :deep)
      end
    end

    test "a directory that cannot be used is an error naming the path" do
      base = tmp_dir!("bad")
      File.mkdir_p!(base)
      file = Path.join(base, "a-file")
      File.write!(file, "x")
      target = Path.join(file, "store")

      assert {:error, %Causeway.Error{kind: :path, message: msg}} =
               Causeway.start_link(dir: target)

      assert msg =~ target
      refute Process.whereis(Causeway)

      # a directory holding something else is refused and left as it was
      other = Path.join(base, "other")
      File.mkdir_p!(other)
      File.write!(Path.join(other, "notes.txt"), "mine")

      assert {:error, %Causeway.Error{kind: :incompatible, message: msg}} =
               Causeway.start_link(dir: other)

      assert msg =~ other
      assert File.ls!(other) == ["notes.txt"]

      assert {:error, %Causeway.Error{kind: :path}} = Causeway.open(Path.join(base, "missing"))
    end

    test "a corrupt store is refused with a clear error and left as it was" do
      {_, dir} = start_causeway!()
      Runtime.state_change(:a, :b)
      flush!()
      stop_causeway!()
      # damage the manifest the CURRENT file points at
      manifest = Path.join(dir, String.trim(File.read!(Path.join(dir, "CURRENT"))))
      File.write!(manifest, :binary.copy(<<0xDE, 0xAD>>, 64))
      snapshot = for f <- File.ls!(dir), into: %{}, do: {f, File.read!(Path.join(dir, f))}

      assert {:error, %Causeway.Error{kind: kind, message: msg}} = Causeway.start_link(dir: dir)
      assert kind in [:path, :incompatible]
      assert msg =~ dir
      assert {:error, %Causeway.Error{}} = Causeway.open(dir)
      after_ = for f <- File.ls!(dir), into: %{}, do: {f, File.read!(Path.join(dir, f))}
      assert Map.take(after_, Map.keys(snapshot)) == snapshot
    end

    test "runtime functions" do
      start_causeway!()

      assert_raise ArgumentError, ~r/function_entry/, fn ->
        Runtime.function_entry("Mod", :f, [])
      end

      assert_raise ArgumentError, ~r/function_entry/, fn ->
        Runtime.function_entry(Mod, :f, :not_a_list)
      end

      # the NIF checks its arguments itself too
      for {args, msg} <- [
            {["Mod", :f, []], ~r/module must be an atom/},
            {[Mod, 1, []], ~r/function must be an atom/},
            {[Mod, :f, %{}], ~r/args must be a list/}
          ] do
        assert_raise ArgumentError, msg, fn ->
          apply(Causeway.Native, :rt_function_entry, args)
        end
      end

      assert_raise ArgumentError, ~r/function_exit/, fn -> Runtime.function_exit(-1, :ok) end
      assert_raise ArgumentError, ~r/receiver/, fn -> Runtime.message_send(:not_a_pid, :hi) end
      assert_raise ArgumentError, ~r/sender/, fn -> Runtime.message_receive("x", :hi) end
      assert_raise ArgumentError, ~r/process_spawn/, fn -> Runtime.process_spawn(make_ref()) end
      assert_raise ArgumentError, ~r/process_exit/, fn -> Runtime.process_exit(:x, :normal) end
      assert_raise ArgumentError, ~r/error/, fn -> Runtime.error(:bad_kind, :r, []) end
      # an exit for a call id that was never entered is stored, and counted as orphaned later
      assert :ok = Runtime.function_exit(987_654_321, :ok)
      # an improper list of args is fine
      id = Runtime.function_entry(Mod, :f, [1, 2 | 3])
      Runtime.function_exit(id, :ok)
      flush!()
      [entry | _] = Causeway.events(type: :function_entry)
      assert entry.data == [1, 2 | 3]
      assert entry.arity == 2
    end

    test "queries" do
      start_causeway!()
      assert_raise ArgumentError, ~r/:pid must be a pid/, fn -> Causeway.events(pid: :me) end
      assert_raise ArgumentError, ~r/unknown event type/, fn -> Causeway.events(type: :nope) end
      assert_raise ArgumentError, ~r/:limit/, fn -> Causeway.events(limit: -1) end
      assert_raise ArgumentError, ~r/:order/, fn -> Causeway.events(order: :sideways) end
      assert_raise ArgumentError, ~r/keyword/, fn -> Causeway.events(:pid) end
      assert_raise ArgumentError, ~r/:since/, fn -> Causeway.events(since: "noon") end
      assert_raise ArgumentError, fn -> Causeway.event("1") end
      assert_raise ArgumentError, fn -> Causeway.call_tree(:x) end
      assert_raise ArgumentError, fn -> Causeway.state_at(:x, DateTime.utc_now()) end
      assert Causeway.events(pid: self()) == []
    end

    test "without a running instance, capture is a no-op and queries say so" do
      assert Runtime.function_entry(Mod, :f, []) == nil
      assert Runtime.function_exit(nil, :ok) == :ok
      assert Runtime.message_send(self(), :hi) == :ok
      assert {:error, %Causeway.Error{kind: :not_running}} = Causeway.flush()
      assert_raise Causeway.Error, ~r/not_running/, fn -> Causeway.events() end
    end
  end
end
