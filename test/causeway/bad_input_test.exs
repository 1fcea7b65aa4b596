defmodule Causeway.BadInputTest do
  # Issue 17: bad input that aborted the VM, hung, acted on unrelated
  # processes or gave unclear errors. One test per item found.
  use Causeway.Case, async: false

  import ExUnit.CaptureIO
  alias Causeway.{ChildVM, Runtime}

  describe "sizes (item 1)" do
    test "ring sizes past the maximum are an ArgumentError before anything is allocated" do
      for ring <- [2 ** 40, 2 ** 62, 2 ** 25] do
        assert_raise ArgumentError, ~r/:ring_size must be an integer in 2\.\.16777216/, fn ->
          Causeway.start_link(dir: tmp_dir!(), ring_size: ring)
        end
      end
    end

    test "rings larger than the machine allows are an error, at once" do
      {t, result} =
        :timer.tc(fn -> Causeway.start_link(dir: tmp_dir!(), shards: 64, ring_size: 2 ** 24) end)

      assert {:error, %Causeway.Error{kind: :invalid_argument, message: msg}} = result
      assert msg =~ "the rings would take" and msg =~ "64 shards"
      # nothing was allocated: it answers in well under the 30 s it hung for
      assert t < 5_000_000
      refute Process.whereis(Causeway)
    end

    test "a memory budget the rings cannot fit in, or past its maximum, is an ArgumentError" do
      assert {:error, %Causeway.Error{kind: :invalid_argument, message: msg}} =
               Causeway.start_link(
                 dir: tmp_dir!(),
                 ring_size: 65_536,
                 shards: 2,
                 memory_budget: 1_000
               )

      assert msg =~ "memory_budget (1000 B) must exceed the ring slots"

      assert_raise ArgumentError, ~r/:memory_budget must be an integer in 1\.\./, fn ->
        Causeway.start_link(dir: tmp_dir!(), memory_budget: 2 ** 63)
      end
    end

    test "a huge ring in a child VM: no abort, a clear error" do
      peer = ChildVM.start!()

      try do
        # the native check is the last line of defence: call the NIF's
        # options path straight, past the Elixir-side range check
        r = ChildVM.call(peer, Causeway.ApiFuzz, :native_start, [tmp_dir!(), 2 ** 30, 64])

        assert {:ok, {:error, {:invalid_argument, msg}}} = r
        assert msg =~ "ring"
        assert {:ok, 3} = ChildVM.call(peer, Kernel, :+, [1, 2])
      after
        ChildVM.stop(peer)
      end
    end
  end

  describe "integers beyond 64 bits (item 2)" do
    setup do
      start_causeway!()
      :ok
    end

    test "query options name the option and its range" do
      for {opt, v} <- [call_id: 2 ** 64, arity: 0x7FFF_FFFF_FFFF_FFFF, after: 2 ** 64, arity: -1] do
        assert_raise ArgumentError, ~r/#{inspect(opt)} must be an integer in 0\.\./, fn ->
          Causeway.events([{opt, v}])
        end
      end

      assert_raise ArgumentError, ~r/event id/, fn -> Causeway.event(2 ** 64) end
      assert_raise ArgumentError, ~r/event id/, fn -> Causeway.call_tree(2 ** 70) end
      assert_raise ArgumentError, ~r/event id/, fn -> Causeway.causal_chain(-1) end
    end

    test "start and configure options name the option and its range" do
      assert_raise ArgumentError, ~r/:batch_size must be an integer in 1\.\.1000000/, fn ->
        Causeway.configure(batch_size: 2 ** 64)
      end

      for opt <- [:max_pending, :correlation_ttl_ms, :max_processes, :max_retries] do
        assert_raise ArgumentError, ~r/#{inspect(opt)} must be an integer in/, fn ->
          Causeway.start_link([{opt, 2 ** 64}, dir: tmp_dir!(), name: :other])
        end
      end

      assert_raise ArgumentError, ~r/retention :max_bytes/, fn ->
        Causeway.start_link(dir: tmp_dir!(), name: :other, retention: [max_bytes: 2 ** 64])
      end
    end

    test "a runtime exit with a call id past 64 bits is an ArgumentError" do
      assert_raise ArgumentError, ~r/function_exit/, fn -> Runtime.function_exit(2 ** 64, :x) end
    end
  end

  describe "names that are not Causeway instances (item 3)" do
    setup do
      {:ok, agent} = Agent.start_link(fn -> :untouched end, name: :some_agent)
      %{agent: agent}
    end

    test "stop, flush, subscribe and unsubscribe leave an unrelated process alone", %{agent: a} do
      assert {:error, %Causeway.Error{kind: :not_running, message: msg}} =
               Causeway.stop(:some_agent)

      assert msg =~ "not a Causeway instance"
      assert {:error, %Causeway.Error{kind: :not_running}} = Causeway.flush(:some_agent)

      assert {:error, %Causeway.Error{kind: :not_running}} =
               Causeway.unsubscribe(:health, :some_agent)

      assert {:error, %Causeway.Error{kind: :not_running}} =
               Causeway.subscribe(:health, :some_agent)

      assert {:error, %Causeway.Error{}} = Causeway.configure([batch_size: 10], :some_agent)
      assert {:error, %Causeway.Error{}} = Causeway.enforce_retention(:some_agent)

      assert_raise Causeway.Error, ~r/not a Causeway instance/, fn ->
        Causeway.metrics(:some_agent)
      end

      # it never received anything
      assert Process.alive?(a)
      assert Agent.get(a, & &1) == :untouched
      assert {:messages, []} = Process.info(a, :messages)
    end

    test "unsubscribe from an unknown topic raises as subscribe does" do
      assert_raise ArgumentError, ~r/:backpressure, :health or :incident/, fn ->
        Causeway.unsubscribe(:not_a_topic)
      end

      assert_raise ArgumentError, ~r/:backpressure, :health or :incident/, fn ->
        Causeway.subscribe(:not_a_topic)
      end
    end

    test "stop of a name nobody holds is :ok, as before" do
      assert :ok = Causeway.stop(:nobody_has_this_name)
    end
  end

  describe "closing (item 4)" do
    test "close/1 refuses a running instance's handle, which keeps working" do
      {pid, _dir} = start_causeway!()
      %{handle: h} = GenServer.call(pid, :info)

      assert_raise Causeway.Error, ~r/running instance/, fn ->
        Causeway.close(%Causeway.Store{handle: h, dir: "x"})
      end

      id = Runtime.function_entry(Demo.Mod, :still_works, [])
      Runtime.function_exit(id, :yes)
      assert :ok = Causeway.flush()
      assert [_, _] = Causeway.events(pid: self())
      assert %{} = Causeway.metrics()
    end

    test "a closed store gives {:error, closed} kinds, never BadMapError" do
      {_pid, dir} = start_causeway!()
      flush!()
      stop_causeway!()
      {:ok, s} = Causeway.open(dir)
      :ok = Causeway.close(s)

      for f <- [
            fn -> Causeway.events(store: s) end,
            fn -> Causeway.event(1, store: s) end,
            fn -> Causeway.call_tree(1, store: s) end,
            fn -> Causeway.state_history(self(), store: s) end
          ] do
        assert_raise Causeway.Error, ~r/closed/, f
      end

      assert_raise ArgumentError, fn -> Causeway.close(:not_a_store) end
    end
  end

  describe "long encodings (item 5)" do
    test "a 16 MB binary or a 100 000-key map does not hold the caller's normal scheduler" do
      start_causeway!(max_term_bytes: 64 * 1024 * 1024, memory_budget: 2 * 1024 * 1024 * 1024)
      big_bin = :binary.copy("x", 16 * 1024 * 1024)
      big_map = Map.new(1..100_000, &{&1, &1})

      me = self()

      {reports, captured} =
        in_process(fn ->
          :erlang.system_monitor(self(), [{:long_schedule, 1}])

          for _ <- 1..3 do
            Runtime.state_change(nil, big_bin)
            Runtime.state_change(nil, big_map)
          end

          :erlang.system_monitor(:undefined)
          reports = collect_long_schedule(self(), [])
          {reports, self()}
        end)

      assert reports == [],
             "long_schedule reports for the capturing process: #{inspect(reports)}"

      flush!()
      assert length(Causeway.state_history(captured)) == 6
      refute me == captured
    end

    test "with a big budget, deep and improper terms are sized without a crash" do
      start_causeway!(max_term_bytes: 1024 * 1024)
      deep = Enum.reduce(1..100_000, :bottom, fn _, acc -> [acc] end)
      wide = Enum.to_list(1..50_000)
      Runtime.state_change(nil, deep)
      Runtime.state_change(nil, [1, 2 | 3])
      Runtime.state_change(nil, [wide | :improper])
      Runtime.state_change(nil, {deep, %{k: deep}})
      flush!()
      assert length(Causeway.state_history(self())) == 4
    end
  end

  defp collect_long_schedule(pid, acc) do
    receive do
      {:monitor, ^pid, :long_schedule, info} -> collect_long_schedule(pid, [info | acc])
      {:monitor, _other, :long_schedule, _} -> collect_long_schedule(pid, acc)
    after
      200 -> acc
    end
  end

  describe "printing call trees (item 6)" do
    test "a 20 000-deep recursion prints at once, bounded, with its depth shown" do
      start_causeway!(ring_size: 65_536)
      depth = 20_000

      root =
        in_process(fn ->
          ids = for i <- 1..depth, do: Runtime.function_entry(Demo.Deep, :down, [i])
          for id <- Enum.reverse(ids), do: Runtime.function_exit(id, :ok)
          hd(ids)
        end)

      flush!()
      tree = Causeway.call_tree(root, max_nodes: :infinity)

      {t, out} =
        :timer.tc(fn ->
          capture_io(fn -> Causeway.print_call_tree(root, max_nodes: :infinity) end)
        end)

      lines = String.split(out, "\n", trim: true)
      # bounded by default: 1 000 lines and a line saying how many were left out
      assert length(lines) == 1_001
      assert List.last(lines) =~ "19000 more calls not shown"
      assert Enum.at(lines, 500) =~ "·[depth 500]"
      # linear: it took > 30 s for 5 000 levels before
      assert t < 10_000_000

      all = Causeway.CallTree.format(tree, max_lines: :infinity)
      assert length(String.split(all, "\n")) == depth
      assert String.length(all) < 200 * depth
    end

    test "a call recorded with an improper list of args prints it" do
      start_causeway!()

      ids =
        in_process(fn ->
          for args <- [[1 | 2], [:a, :b | "tail"], []] do
            id = Runtime.function_entry(Demo.Odd, :f, args)
            Runtime.function_exit(id, :ok)
            id
          end
        end)

      flush!()
      out = for id <- ids, do: capture_io(fn -> Causeway.print_call_tree(id) end)

      assert [improper, longer, none] = out
      assert improper =~ "Demo.Odd.f(1 | 2) → :ok"
      assert longer =~ ~s{Demo.Odd.f(:a, :b | "tail") → :ok}
      assert none =~ "Demo.Odd.f() → :ok"
    end
  end

  describe "unclear errors (item 8)" do
    setup do
      start_causeway!()
      :ok
    end

    test "unknown options are named, for every query" do
      a = self()

      for {name, f} <- [
            message_flow: fn -> Causeway.message_flow(a, a, bogus: 1) end,
            state_history: fn -> Causeway.state_history(a, bogus: 1) end,
            state_at: fn -> Causeway.state_at(a, DateTime.utc_now(), bogus: 1) end,
            call_tree: fn -> Causeway.call_tree(a, bogus: 1) end,
            causal_chain: fn -> Causeway.causal_chain(1, bogus: 1) end,
            event: fn -> Causeway.event(1, bogus: 1) end,
            events: fn -> Causeway.events(bogus: 1) end,
            process_tree: fn -> Causeway.process_tree(a, bogus: 1) end,
            print_timeline: fn -> Causeway.print_timeline(a, bogus: 1) end,
            print_call_tree: fn -> Causeway.print_call_tree(a, bogus: 1) end,
            open: fn -> Causeway.open("x", bogus: 1) end,
            trace: fn -> Causeway.trace(Enum, bogus: 1) end,
            configure: fn -> Causeway.configure(bogus: 1) end,
            start_link: fn -> Causeway.start_link(bogus: 1) end,
            mermaid: fn -> Causeway.Export.mermaid_text(pids: [a], bogus: 1) end
          ] do
        e = assert_raise ArgumentError, f
        assert e.message =~ ":bogus", "#{name}: #{e.message}"
      end
    end

    test "the calls that raised FunctionClauseError, KeyError or Protocol.UndefinedError" do
      for f <- [
            fn -> Causeway.flush(Causeway, -5) end,
            fn -> Causeway.stop(123) end,
            fn -> Causeway.stop_trace(:nope) end,
            fn -> Causeway.trace_info(%{}) end,
            fn -> Causeway.trace({Enum, :map, -1}) end,
            fn -> Causeway.unsubscribe(:health, "x") end,
            fn -> Causeway.child_spec(:nope) end,
            fn -> Causeway.event(1, :nope) end,
            fn -> Causeway.open(123) end,
            fn -> Causeway.open("x", :nope) end,
            fn -> Causeway.print_timeline(:nope) end,
            fn -> Causeway.Export.chrome_trace(123) end,
            fn -> Causeway.Export.chrome_trace("x.json", :nope) end,
            fn -> Causeway.Export.mermaid("x.mmd", []) end,
            fn -> Causeway.Export.mermaid_text(:nope) end,
            fn -> Causeway.Export.chrome_events(:nope) end,
            fn -> Causeway.Export.chrome_events([1, 2]) end,
            # (a map that only names the struct, as the API fuzz makes)
            fn -> Causeway.Export.chrome_events([%{__struct__: Causeway.Event, x: 1}]) end,
            fn -> Causeway.capture({:pid, :nope}, true) end,
            fn -> Causeway.events(:nope) end,
            fn -> Causeway.events(store: %Causeway.Store{}) end,
            fn -> Causeway.events(instance: "x") end
          ] do
        assert_raise ArgumentError, f
      end
    end
  end

  describe "random calls in a child VM (items 7 and 8)" do
    @tag timeout: 600_000
    test "every public function with nasty terms: only documented results; stored events survive" do
      dir = tmp_dir!("fuzz")
      calls = String.to_integer(System.get_env("CAUSEWAY_FUZZ_CALLS", "1500"))
      peer = ChildVM.start!()

      result =
        try do
          ChildVM.call(peer, Causeway.ApiFuzz, :run, [dir, 17, calls], 540_000)
        after
          ChildVM.stop(peer)
        end

      assert {:ok, %{results: results, unclear: unclear}} = result
      IO.puts("\n  api fuzz: #{calls} calls, results by kind #{inspect(results)}")
      assert unclear == %{}, "unclear errors:\n" <> Enum.map_join(unclear, "\n", &inspect/1)

      # the VM exited normally: the store reopens, with every marker
      {:ok, s} = Causeway.open(dir)
      assert Causeway.ApiFuzz.count_markers(s) == 100
      Causeway.close(s)
    end

    @tag timeout: 600_000
    test "a store opened while the last VM's OS process is still exiting is busy until it is gone, never damaged" do
      dir = tmp_dir!("exiting")

      for i <- 1..3 do
        peer = ChildVM.start!()

        {:ok, _} =
          ChildVM.call(peer, Causeway.ApiFuzz, :run, [dir, 700 + i, 60, [retention: true]])

        # an instance writing with retention at every 100 ms, then a normal
        # exit the next start does not wait for
        start =
          "Causeway.stop(); {:ok, p} = Causeway.start_link(dir: #{inspect(dir)}, " <>
            "retention: [max_bytes: 1, interval_ms: 100]); Process.unlink(p); :ok"

        {:ok, {:ok, _}} = ChildVM.call(peer, Code, :eval_string, [start])
        {:ok, :ok} = ChildVM.call(peer, Causeway.ApiFuzz, :write_markers, [2_000])

        try do
          :peer.cast(peer, :init, :stop, [])
        catch
          _, _ -> :ok
        end

        deadline = System.monotonic_time(:millisecond) + 60_000

        kinds =
          Stream.repeatedly(fn -> Causeway.start_link(dir: dir) end)
          |> Enum.reduce_while([], fn
            {:ok, _}, acc ->
              :ok = Causeway.stop()
              {:halt, [:ok | acc]}

            {:error, %Causeway.Error{kind: :busy}}, acc ->
              if System.monotonic_time(:millisecond) > deadline,
                do: {:halt, [:still_busy | acc]},
                else: {:cont, [:busy | acc]}

            other, acc ->
              {:halt, [other | acc]}
          end)

        ChildVM.stop(peer)
        assert hd(kinds) == :ok, "VM #{i}: #{inspect(hd(kinds))}"
      end
    end

    @tag timeout: 900_000
    test "a store reused by child VMs in a row, each making random calls and exiting, always reopens" do
      dir = tmp_dir!("reuse")
      vms = String.to_integer(System.get_env("CAUSEWAY_REUSE_VMS", "20"))

      for i <- 1..vms do
        peer = ChildVM.start!()

        r =
          try do
            ChildVM.call(
              peer,
              Causeway.ApiFuzz,
              :run,
              [dir, 100 + i, 150, [retention: true]],
              300_000
            )
          after
            ChildVM.stop(peer)
          end

        assert {:ok, %{unclear: unclear}} = r, "VM #{i}: #{inspect(r)}"
        assert unclear == %{}, "VM #{i}: " <> Enum.map_join(unclear, "\n", &inspect/1)

        # the next VM (here: this one) opens it for writing, and finds the
        # markers written last (no retention on this instance)
        assert {:ok, pid} = Causeway.start_link(dir: dir), "VM #{i}: the store did not reopen"
        before = Causeway.ApiFuzz.count_markers(nil)
        Causeway.ApiFuzz.write_markers(100)
        :ok = Causeway.stop()
        refute Process.alive?(pid)
        {:ok, s} = Causeway.open(dir)
        assert Causeway.ApiFuzz.count_markers(s) == before + 100, "VM #{i}"
        Causeway.close(s)
      end
    end
  end
end
