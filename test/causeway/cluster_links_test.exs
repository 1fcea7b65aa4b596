defmodule Causeway.ClusterLinksTest do
  # Issue 13 item 2, the links a node cannot make alone: a send to a
  # registered name on another node, a receive recorded without its sender,
  # and a process a traced parent spawns on another node (Node.spawn/2,
  # :erpc.call/4), each followed by message_flow, causal_chain and
  # process_tree across real nodes.
  use Causeway.ClusterCase, async: false

  setup do
    start_causeway!()
    peers!([:b, :c])
  end

  defp shape(chain), do: Enum.map(chain, fn {e, via} -> {e.type, e.node, via} end)

  test "a GenServer.call to {name, node} is linked to the callee's receive and state change",
       %{b: b} do
    counter = :erpc.call(b, ClusterHelper, :named_counter, [:cw_counter, 0])

    {client, _} =
      ClusterHelper.traced([:send], fn ->
        for k <- [3, 3], do: GenServer.call({:cw_counter, b}, {:add, k})
      end)

    :ok = :erpc.call(b, Causeway, :flush, [])

    sends = Causeway.events(pid: client, type: :message_send)
    calls = Enum.filter(sends, &match?({:"$gen_call", _, {:add, 3}}, &1.data.message))
    # the send keeps the name it was given; it is no function call
    assert [%{data: %{to: {:cw_counter, ^b}}, module: nil, function: nil, arity: nil}, _] = calls
    assert Causeway.events(module: b) == []

    [_init, first, second] = Causeway.state_history(counter, nodes: [b])
    assert {first.data.new, second.data.new} == {3, 6}

    chain = Causeway.causal_chain(second.id, nodes: :all)

    assert [
             {:state_change, ^b, nil},
             {:message_receive, ^b, :caused_by},
             {:message_send, here, :receives},
             {:function_entry, here, :caused_by}
           ] = shape(chain)

    assert here == node()
    # the second change goes back to the second of the two identical sends
    assert elem(Enum.at(chain, 2), 0).id == List.last(calls).id
    assert elem(Enum.at(Causeway.causal_chain(first.id, nodes: :all), 2), 0).id == hd(calls).id

    # message_flow pairs both named sends with the counter's receives, in order
    flows = Causeway.message_flow(client, counter, nodes: :all)
    assert Enum.map(flows, & &1.send.id) == Enum.map(calls, & &1.id)
    assert [%{receive: %{node: ^b} = r1}, %{receive: %{node: ^b} = r2}] = flows
    assert r1.id < r2.id and r1.pid == counter
    # the local view has no receive for them
    assert Enum.all?(Causeway.message_flow(client, counter), &(&1.receive == nil))
  end

  test "a named send whose name is not the receiver's is not in its flow", %{b: b} do
    counter = :erpc.call(b, ClusterHelper, :named_counter, [:cw_one, 0])
    _other = :erpc.call(b, ClusterHelper, :named_counter, [:cw_two, 0])

    {client, _} =
      ClusterHelper.traced([:send], fn ->
        GenServer.call({:cw_two, b}, {:add, 1})
        GenServer.call({:cw_one, b}, {:add, 1})
      end)

    :ok = :erpc.call(b, Causeway, :flush, [])
    flows = Causeway.message_flow(client, counter, nodes: :all)
    assert [%{send: %{data: %{to: {:cw_one, ^b}}}, receive: %{pid: ^counter}}] = flows
  end

  test "a receive traced without its sender goes back to the send on another node, FIFO",
       %{b: b, c: c} do
    r = :erpc.call(b, ClusterHelper, :traced_receiver, [3])

    # in time: :ping from here, :ping from c, :ping from here again
    me = self()

    here_sender =
      spawn(fn ->
        send(me, {:sender, ClusterHelper.traced_sends(r, [:ping], 0)})
        receive do: (:again -> send(me, {:sender, ClusterHelper.traced_sends(r, [:ping], 0)}))
      end)

    assert_receive {:sender, s1}, 10_000
    Process.sleep(300)
    s2 = :erpc.call(c, ClusterHelper, :traced_sends, [r, [:ping], 0])
    Process.sleep(300)
    send(here_sender, :again)
    assert_receive {:sender, s3}, 10_000
    Process.sleep(200)
    :ok = :erpc.call(b, Causeway, :flush, [])

    receives = Causeway.events(nodes: [b], pid: r, type: :message_receive)
    assert [%{data: %{from: nil, message: :ping}} | _] = receives
    assert length(receives) == 3

    senders =
      for rcv <- receives do
        {:ok, chain, info} = Causeway.Cluster.causal_chain(rcv.id, nodes: :all)

        assert [
                 {:message_receive, ^b, nil},
                 {:message_send, _, :receives},
                 {:function_entry, _, :caused_by}
               ] = shape(chain)

        assert info.missing == []
        {send, _} = Enum.at(chain, 1)
        {send.pid, info.ambiguous}
      end

    # each receive is paired with the send in its place; the two senders
    # make the later choices ambiguous (counted)
    assert Enum.map(senders, &elem(&1, 0)) == [s1, s2, s3]
    assert node(s2) == c
    assert [{_, 0}, {_, a2}, {_, a3}] = senders
    assert a2 > 0 and a3 > 0

    # without the senders' nodes the chain stops at the receive
    assert [{_, nil}] = Causeway.causal_chain(hd(receives).id, nodes: [b])
  end

  test "a traced parent's Node.spawn and :erpc.call children link back to it", %{b: b} do
    {parent, {spawned, worker}} =
      ClusterHelper.traced([:send, :receive, :procs], fn ->
        me = self()
        spawned = Node.spawn(b, :erlang, :send, [me, :started])
        receive do: (:started -> :ok)
        worker = :erpc.call(b, ClusterHelper, :erpc_child, [])
        {spawned, worker}
      end)

    spawns = Causeway.events(pid: parent, type: :process_spawn)
    assert Enum.map(spawns, & &1.data.child) == [spawned, worker]
    assert Enum.all?(spawns, &(&1.parent_id != nil))

    [entry] = Causeway.events(nodes: [b], pid: worker, type: :function_entry)

    assert [
             {:function_entry, ^b, nil},
             {:process_spawn, here, :spawned_by},
             {:function_entry, here, :caused_by},
             # what started Sender.run: the :go it was sent
             {:message_receive, here, :caused_by}
           ] = shape(Causeway.causal_chain(entry.id, nodes: :all))

    assert here == node()

    tree = Causeway.process_tree(parent, nodes: :all)
    assert Enum.map(tree.children, & &1.pid) == [spawned, worker]

    # a local spawn is still the BEAM's own trace, recorded once
    {p2, child} = ClusterHelper.traced([:procs], fn -> spawn(fn -> :ok end) end)
    assert [%{data: %{child: ^child}}] = Causeway.events(pid: p2, type: :process_spawn)
  end
end
