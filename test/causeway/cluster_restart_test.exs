defmodule Causeway.ClusterRestartTest do
  # Issue 13 item 2: links across nodes are made at query time from what
  # each node stored, so they survive a restart of either node and a
  # disconnect; real :peer nodes started again under the same name on the
  # same store. (No other peers here: with a third node connected to both,
  # `global` drops more connections than the one a test cuts, to prevent
  # overlapping partitions.)
  use Causeway.ClusterCase, async: false

  test "cross-node chains survive a restart of either node, and a disconnect" do
    start_causeway!()
    dirs = %{b: tmp_dir!("rb"), c: tmp_dir!("rc")}
    names = for k <- [:b, :c], into: %{}, do: {k, :"#{k}r_#{System.unique_integer([:positive])}"}

    start = fn k ->
      ClusterHelper.peer!(names[k], dirs[k], exact_name: true, tcp_control: true)
    end

    {pb, b} = start.(:b)
    {pc, c} = start.(:c)
    # the peers running now (restarted ones replace their first), for on_exit
    {:ok, peers} = Agent.start(fn -> %{b: pb, c: pc} end)

    on_exit(fn ->
      for {_, p} <- Agent.get(peers, & &1), do: ClusterHelper.stop(p)
      Agent.stop(peers)
    end)

    peer = fn k -> Agent.get(peers, & &1[k]) end

    # a client on c calls the counter on b, and one here does
    counter = :erpc.call(b, ClusterHelper, :counter, [0])
    far = :erpc.call(c, ClusterHelper, :call_recorded, [counter, [{:add, 1}]])
    near = ClusterHelper.call_recorded(counter, [{:add, 2}])
    :ok = :erpc.call(b, Causeway, :flush, [])
    [_init, by_far, by_near] = Causeway.state_history(counter, nodes: [b])

    chain = fn change, nodes ->
      {:ok, chain, info} = Causeway.Cluster.causal_chain(change.id, nodes: nodes)
      {Enum.map(chain, fn {e, via} -> {e.type, e.pid, via} end), info.missing}
    end

    linked = fn change, client ->
      want = [
        {:state_change, counter, nil},
        {:message_receive, counter, :caused_by},
        {:message_send, client, :receives},
        {:function_entry, client, :caused_by}
      ]

      assert chain.(change, [node(), b, c]) == {want, []}
    end

    linked.(by_far, far)

    # each node stopped and started again on its store: the same chain
    for k <- [:c, :b] do
      ClusterHelper.stop(peer.(k))
      {p, _} = start.(k)
      Agent.update(peers, &Map.put(&1, k, p))
      linked.(by_far, far)
    end

    # only b left: disconnected, it is named and the chain stops here;
    # connected again, the chain is whole
    ClusterHelper.stop(peer.(:c))
    true = Node.disconnect(b)

    assert {:ok, [], %{missing: [{^b, :not_connected}]}} =
             Causeway.Cluster.causal_chain(by_near.id, nodes: [node(), b])

    true = Node.connect(b)
    assert {[_, _, _, _ | _], []} = chain.(by_near, [node(), b])
    assert {[_, _, {:message_send, ^near, :receives} | _], []} = chain.(by_near, [node(), b])
  end
end
