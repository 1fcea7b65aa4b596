defmodule Causeway.ClusterTest do
  # Issue 13 item 1 (cluster queries) and 3 (clock offsets), with real nodes.
  use Causeway.ClusterCase, async: false

  setup do
    start_causeway!()
    %{b: b, c: c, peers: peers, dirs: dirs} = peers!([:b, :c])
    %{b: b, c: c, pb: peers.b, pc: peers.c, dir_b: dirs.b, dir_c: dirs.c}
  end

  test "events from every node, merged by time, each keeping its node", %{b: b, c: c} do
    ClusterHelper.record(Here, 3)
    :erpc.call(b, ClusterHelper, :record, [OnB, 3])
    :erpc.call(c, ClusterHelper, :record, [OnC, 3])

    all = Causeway.events(nodes: :all, type: :function_entry, limit: :infinity)

    assert Enum.map(all, & &1.module) ==
             List.duplicate(Here, 3) ++ List.duplicate(OnB, 3) ++ List.duplicate(OnC, 3)

    assert Enum.map(all, & &1.node) |> Enum.uniq() == [node(), b, c]

    # limits apply to the merged result, and :desc reverses it
    assert [%{module: OnC}, %{module: OnC}] =
             Causeway.events(nodes: :all, type: :function_entry, limit: 2, order: :desc)

    assert {:ok, two, %{missing: []}} =
             Causeway.Cluster.events(nodes: [b, c], type: :function_entry, limit: 4)

    assert length(two) == 4 and Enum.all?(two, &(&1.node in [b, c]))

    # the default stays this node
    assert Enum.all?(Causeway.events(type: :function_entry), &(&1.node == node()))
  end

  test "a node's state history and metrics, per node and in total", %{b: b} do
    pid = :erpc.call(b, ClusterHelper, :record, [OnB, 5])
    assert node(pid) == b
    assert [_ | _] = Causeway.events(nodes: [b], pid: pid, limit: :infinity)

    m = Causeway.metrics(nodes: :all)
    assert Map.has_key?(m.nodes, b) and Map.has_key?(m.nodes, node())
    assert m.totals.persisted == Enum.sum(Enum.map(Map.values(m.nodes), & &1.persisted))
    assert Map.has_key?(m.clock_offsets_ns, b)
  end

  test "a node that is down or not connected is named, in bounded time", %{b: b, pb: pb} do
    ClusterHelper.record(Here, 2)
    os_pid = :erpc.call(b, :os, :getpid, []) |> List.to_integer()
    System.cmd("kill", ["-9", Integer.to_string(os_pid)])

    {t, {:ok, events, %{missing: missing}}} =
      :timer.tc(fn -> Causeway.Cluster.events(nodes: [node(), b], timeout: 2_000) end)

    assert t < 5_000_000
    assert [{^b, _reason}] = missing
    assert Enum.all?(events, &(&1.node == node()))
    ClusterHelper.stop(pb)

    ghost = :"ghost@127.0.0.1"

    assert {:ok, _, %{missing: [{^ghost, :not_connected}]}} =
             Causeway.Cluster.events(nodes: [ghost])

    refute ghost in Node.list()
  end

  test "clock offsets put a node with a shifted clock back on one time axis", %{b: b} do
    # test-only: node b's clock, as the cluster sees it, runs 5 s ahead
    :ok = :erpc.call(b, Application, :put_env, [:causeway, :test_clock_offset_ns, 5_000_000_000])
    Causeway.Cluster.forget_offsets()
    offsets = Causeway.Cluster.clock_offsets([node(), b])
    assert_in_delta offsets[b], 5_000_000_000, 200_000_000
    assert offsets[node()] == 0

    # b's events carry wall times 5 s ahead too: uncorrected, the event
    # made on b first would sort after ours
    # The correction is only as good as half the fastest round trip (the
    # assert_in_delta above allows 200 ms): the two events are further
    # apart than that, or a loaded machine could honestly swap them.
    :erpc.call(b, ClusterHelper, :record, [First, 1])
    Process.sleep(300)
    ClusterHelper.record(Second, 1)

    assert {:ok, evs, %{offsets: %{^b => off}}} =
             Causeway.Cluster.events(nodes: :all, type: :function_entry, limit: :infinity)

    assert off > 4_000_000_000
    [on_b] = Enum.filter(evs, &(&1.module == First))
    [here] = Enum.filter(evs, &(&1.module == Second))
    assert DateTime.compare(on_b.wall_time, here.wall_time) == :gt
    assert Enum.map(evs, & &1.module) |> Enum.filter(&(&1 in [First, Second])) == [First, Second]
  end

  test "post-mortem: the stores of stopped nodes opened together answer as one cluster", ctx do
    pid_b = :erpc.call(ctx.b, ClusterHelper, :record, [OnB, 2])
    :erpc.call(ctx.c, ClusterHelper, :record, [OnC, 2])
    for p <- [ctx.pb, ctx.pc], do: ClusterHelper.stop(p)

    {:ok, all} = Causeway.open([ctx.dir_b, ctx.dir_c], read_only: true)
    assert inspect(all) =~ "#Causeway.Stores<"
    evs = Causeway.events(store: all, type: :function_entry, limit: :infinity)
    assert Enum.map(evs, & &1.module) == [OnB, OnB, OnC, OnC]
    assert Enum.map(evs, & &1.node) |> Enum.uniq() == [ctx.b, ctx.c]
    assert [_, _] = Causeway.events(store: all, type: :function_entry, limit: 2)
    assert [] == Causeway.state_history(pid_b, store: all)
    :ok = Causeway.close(all)

    assert {:error, %Causeway.Error{message: msg}} =
             Causeway.open([ctx.dir_b, "/nonexistent/causeway"], read_only: true)

    assert msg =~ "/nonexistent/causeway"
  end

  test "a trace on every node, stopped as a whole; a node going down ends its part", ctx do
    {:ok, t} = Causeway.trace(ClusterHelper, nodes: :all, max_events: 1_000)
    assert map_size(t.sessions) == 3 and t.missing == []
    ClusterHelper.record(Here, 1)
    :erpc.call(ctx.b, ClusterHelper, :record, [OnB, 1])
    :erpc.call(ctx.c, ClusterHelper, :record, [OnC, 1])

    info = Causeway.trace_info(t)
    assert Enum.all?(info.nodes, fn {_n, i} -> i.running end)

    ClusterHelper.stop(ctx.pc)
    Process.sleep(200)
    info = Causeway.trace_info(t)
    refute info.nodes[ctx.c].running
    assert info.nodes[ctx.b].running

    :ok = Causeway.stop_trace(t)
    refute Causeway.trace_info(t).nodes[ctx.b].running

    # each node recorded its own calls of the traced module
    :ok = :erpc.call(ctx.b, Causeway, :flush, [])
    flush!()

    traced =
      Causeway.events(
        nodes: [node(), ctx.b],
        module: ClusterHelper,
        type: :function_entry,
        limit: :infinity
      )

    assert Enum.map(traced, & &1.node) |> Enum.uniq() |> Enum.sort() == Enum.sort([node(), ctx.b])
    assert Enum.all?(traced, &(&1.source == :tracer))
  end

  test "the cluster dashboard: a row per node and the totals", %{b: b, c: c} do
    :erpc.call(b, ClusterHelper, :record, [OnB, 3])
    frame = Causeway.Top.frame(cluster: true)
    assert frame =~ "Causeway cluster (3 nodes)"
    for n <- [node(), b, c], do: assert(frame =~ to_string(n))
    assert frame =~ "total"
  end

  test "one event, call tree or state asked of the cluster, from the node that has it", %{b: b} do
    pid = :erpc.call(b, ClusterHelper, :record, [OnB, 1])
    [entry] = Causeway.events(nodes: [b], pid: pid, type: :function_entry)
    assert entry.node == b

    assert %Causeway.Event{node: ^b, module: OnB} = Causeway.event(entry.id, nodes: [entry.node])
    assert %Causeway.CallTree{entry: %{node: ^b}} = Causeway.call_tree(entry.id, nodes: [b])
    assert [{%{node: ^b}, nil} | _] = Causeway.causal_chain(entry.id, nodes: [b])
    assert Causeway.state_at(pid, DateTime.utc_now(), nodes: [node(pid)]) == :none
    assert Causeway.event(10_000_000, nodes: :all) == nil
  end

  test "message_flow across nodes: sends paired with the remote receives, FIFO with duplicates",
       %{b: b} do
    rcv = :erpc.call(b, ClusterHelper, :receiver, [])
    other = :erpc.call(b, ClusterHelper, :receiver, [])

    sender =
      spawn(fn ->
        for m <- [:ping, :ping, {:data, 1}, :ping] do
          Causeway.Runtime.message_send(rcv, m)
          send(rcv, {:msg, self(), m})
          receive do: ({:ack, ^m} -> :ok)
        end

        # a second sender's message to another receiver is not part of this flow
        Causeway.Runtime.message_send(other, :ping)
        send(other, {:msg, self(), :ping})
        receive do: ({:ack, :ping} -> :ok)
      end)

    ref = Process.monitor(sender)
    assert_receive {:DOWN, ^ref, _, _, _}, 5_000
    flush!()
    :ok = :erpc.call(b, Causeway, :flush, [])

    flows = Causeway.message_flow(sender, rcv, nodes: :all)
    assert Enum.map(flows, & &1.send.data.message) == [:ping, :ping, {:data, 1}, :ping]
    assert Enum.all?(flows, &(&1.receive != nil and &1.receive.node == b))
    assert Enum.map(flows, & &1.receive.data.message) == [:ping, :ping, {:data, 1}, :ping]
    # FIFO: the receives are distinct and in order
    ids = Enum.map(flows, & &1.receive.id)
    assert ids == Enum.sort(ids) and length(Enum.uniq(ids)) == 4
    # without nodes:, the local view has the sends and no receive
    assert Enum.all?(Causeway.message_flow(sender, rcv), &(&1.receive == nil))
  end

  test "process_tree follows a child spawned on another node", %{b: b} do
    parent =
      spawn(fn ->
        child = Node.spawn(b, ClusterHelper, :spawn_recorded, [])
        Causeway.Runtime.process_spawn(child)
      end)

    ref = Process.monitor(parent)
    assert_receive {:DOWN, ^ref, _, _, _}
    flush!()
    Process.sleep(200)
    :ok = :erpc.call(b, Causeway, :flush, [])

    tree = Causeway.process_tree(parent, nodes: :all)
    assert [%{pid: child, spawned: %{type: :process_spawn}, children: [grand]}] = tree.children
    assert node(child) == b and node(grand.pid) == b
    assert grand.spawned.node == b
    # without nodes: the child is there (its spawn is recorded here), but
    # what it did on b is not looked up
    assert [%{pid: ^child, children: []}] = Causeway.process_tree(parent).children
  end

  test "stream_events pages across nodes in merged order; a node lost midway ends its part",
       ctx do
    # in time: c, here, b (not the order the nodes are asked in)
    :erpc.call(ctx.c, ClusterHelper, :record, [OnC, 3])
    Process.sleep(300)
    ClusterHelper.record(Here, 3)
    Process.sleep(300)
    :erpc.call(ctx.b, ClusterHelper, :record, [OnB, 3])

    filters = [type: :function_entry]
    all = Causeway.events([nodes: :all, limit: :infinity] ++ filters)
    mods = List.duplicate(OnC, 3) ++ List.duplicate(Here, 3) ++ List.duplicate(OnB, 3)
    assert Enum.map(all, & &1.module) == mods

    # pages of 2: every node is asked several times, the order is the merged one
    streamed = Causeway.stream_events([nodes: :all, page_size: 2] ++ filters) |> Enum.to_list()
    assert Enum.map(streamed, &{&1.node, &1.id}) == Enum.map(all, &{&1.node, &1.id})

    desc = Causeway.stream_events([nodes: :all, page_size: 2, order: :desc] ++ filters)
    assert Enum.map(desc, & &1.module) == Enum.reverse(mods)

    # the limit applies to the merged stream
    assert [OnC, OnC, OnC, Here] ==
             Causeway.stream_events([nodes: :all, page_size: 2, limit: 4] ++ filters)
             |> Enum.map(& &1.module)

    # a node that is gone when the stream is made is named at once
    {:ok, stream, %{missing: []} = info} =
      Causeway.Cluster.stream_events([nodes: :all, page_size: 2] ++ filters)

    os_pid = :erpc.call(ctx.c, :os, :getpid, []) |> List.to_integer()
    System.cmd("kill", ["-9", Integer.to_string(os_pid)])
    ClusterHelper.stop(ctx.pc)

    # each node's first page was read when the stream was made: c's two
    # events are there, its next page is not, and the stream says so
    log =
      ExUnit.CaptureLog.capture_log(fn ->
        send(self(), {:streamed, Enum.map(stream, & &1.module)})
      end)

    assert_received {:streamed, got}
    assert got == [OnC, OnC] ++ List.duplicate(Here, 3) ++ List.duplicate(OnB, 3)
    assert log =~ "stream_events goes on without #{ctx.c}"
    # and the node lost midway is named in missing
    assert [{lost, _why}] = Causeway.Cluster.missing(info)
    assert lost == ctx.c
    assert Causeway.Cluster.missing(%{info | missing: [{:x, :y}]}) == [{:x, :y}]
    assert_raise ArgumentError, ~r/stream_events/, fn -> Causeway.Cluster.missing(%{}) end

    assert {:ok, _, %{missing: [{c, _}]}} =
             Causeway.Cluster.stream_events([nodes: [node(), ctx.c]] ++ filters)

    assert c == ctx.c
  end

  test "stream_events over the stores of a cluster opened together", ctx do
    :erpc.call(ctx.c, ClusterHelper, :record, [OnC, 3])
    Process.sleep(300)
    :erpc.call(ctx.b, ClusterHelper, :record, [OnB, 3])
    for p <- [ctx.pb, ctx.pc], do: ClusterHelper.stop(p)

    {:ok, all} = Causeway.open([ctx.dir_b, ctx.dir_c], read_only: true)
    filters = [type: :function_entry, limit: :infinity]
    evs = Causeway.events([store: all] ++ filters)
    assert Enum.map(evs, & &1.module) == List.duplicate(OnC, 3) ++ List.duplicate(OnB, 3)

    streamed = Causeway.stream_events([store: all, page_size: 1] ++ filters) |> Enum.to_list()
    assert Enum.map(streamed, &{&1.node, &1.id}) == Enum.map(evs, &{&1.node, &1.id})
    :ok = Causeway.close(all)
  end

  defp chain_shape(chain), do: Enum.map(chain, fn {e, via} -> {e.type, e.node, via} end)

  test "causal_chain from a state change on b back to the traced GenServer.call here, FIFO",
       %{b: b} do
    counter = :erpc.call(b, ClusterHelper, :counter, [0])

    client =
      spawn(fn ->
        receive do: (:go -> :ok)

        for k <- [3, 3] do
          id = Causeway.Runtime.function_entry(Client, :bump, [k])
          r = GenServer.call(counter, {:add, k})
          Causeway.Runtime.function_exit(id, r)
        end
      end)

    # the caller's sends are traced: {:"$gen_call", from, {:add, 3}}, twice
    {:ok, t} = Causeway.trace(client, what: [:send])
    ref = Process.monitor(client)
    send(client, :go)
    assert_receive {:DOWN, ^ref, _, _, _}, 5_000
    :ok = Causeway.stop_trace(t)
    flush!()
    :ok = :erpc.call(b, Causeway, :flush, [])

    [_init, first, second] = Causeway.state_history(counter, nodes: [b])
    assert {first.data.new, second.data.new} == {3, 6}

    sends =
      Causeway.events(pid: client, type: :message_send)
      |> Enum.filter(&(&1.data.to == counter))

    assert [{:"$gen_call", _, {:add, 3}}, {:"$gen_call", _, {:add, 3}}] =
             Enum.map(sends, & &1.data.message)

    chain = Causeway.causal_chain(second.id, nodes: :all)

    assert [
             {:state_change, ^b, nil},
             {:message_receive, ^b, :caused_by},
             {:message_send, here, :receives},
             {:function_entry, here, :caused_by} | _
           ] = chain_shape(chain)

    assert here == node()
    # the second change goes back to the second of the two identical sends
    {send, _} = Enum.at(chain, 2)
    assert send.id == List.last(sends).id
    assert {%{module: Client, data: [3]}, _} = Enum.at(chain, 3)

    {send1, _} = Enum.at(Causeway.causal_chain(first.id, nodes: :all), 2)
    assert send1.id == hd(sends).id

    # the same walk, with the missing nodes named: none
    assert {:ok, ^chain, %{missing: []}} = Causeway.Cluster.causal_chain(second.id, nodes: :all)
    # without this node asked, the chain stops on b
    assert [{_, nil}, {%{type: :message_receive}, :caused_by}] =
             Causeway.causal_chain(second.id, nodes: [b])

    # :max caps the whole chain
    assert length(Causeway.causal_chain(second.id, nodes: :all, max: 3)) == 3
  end

  test "causal_chain goes from a child on b to its spawn by a parent here", %{b: b} do
    {parent, child} = ClusterHelper.remote_spawn(b)
    [entry] = Causeway.events(nodes: [b], pid: child, type: :function_entry)

    assert [
             {:function_entry, ^b, nil},
             {:process_spawn, here, :spawned_by},
             {:function_entry, here, :caused_by}
           ] = chain_shape(Causeway.causal_chain(entry.id, nodes: :all))

    assert here == node()
    [{_, _}, {spawn, _}, _] = Causeway.causal_chain(entry.id, nodes: :all)
    assert spawn.pid == parent and spawn.data.child == child

    # a node asked that is not there is named; the chain is the same
    ghost = :"ghost@127.0.0.1"

    assert {:ok, [_, _, _], %{missing: [{^ghost, :not_connected}]}} =
             Causeway.Cluster.causal_chain(entry.id, nodes: [b, node(), ghost])
  end

  test "post-mortem: causal_chain across the copied stores of two nodes", ctx do
    counter = :erpc.call(ctx.b, ClusterHelper, :counter, [10])
    client = :erpc.call(ctx.c, ClusterHelper, :call_recorded, [counter, [{:add, 1}, {:add, 2}]])
    {_parent, child} = :erpc.call(ctx.c, ClusterHelper, :remote_spawn, [ctx.b])
    :ok = :erpc.call(ctx.b, Causeway, :flush, [])
    for p <- [ctx.pb, ctx.pc], do: ClusterHelper.stop(p)

    {:ok, all} = Causeway.open([ctx.dir_b, ctx.dir_c], read_only: true)
    [_init, _, second] = Causeway.state_history(counter, store: all)
    chain = Causeway.causal_chain(second.id, store: all)
    {b, c} = {ctx.b, ctx.c}

    assert [
             {:state_change, ^b, nil},
             {:message_receive, ^b, :caused_by},
             {:message_send, ^c, :receives},
             {:function_entry, ^c, :caused_by}
           ] = chain_shape(chain)

    {send, _} = Enum.at(chain, 2)
    assert send.pid == client and send.data.message == {:add, 2}

    [entry] = Causeway.events(store: all, pid: child, type: :function_entry)

    assert [{:function_entry, ^b, nil}, {:process_spawn, ^c, :spawned_by} | _] =
             chain_shape(Causeway.causal_chain(entry.id, store: all))

    :ok = Causeway.close(all)
  end

  test "bad cluster options are ArgumentErrors" do
    assert_raise ArgumentError, ~r/:nodes/, fn -> Causeway.events(nodes: "all") end
    assert_raise ArgumentError, ~r/:timeout/, fn -> Causeway.events(nodes: :all, timeout: -1) end
  end
end
