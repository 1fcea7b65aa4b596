defmodule Causeway.ClusterExportTest do
  # Issue 13 item 5: exports across nodes, with real nodes.
  use Causeway.ClusterCase, async: false

  alias Causeway.Test.JSONParser

  # a GenServer on b called twice from a client on c (the client records
  # its call and each request's send, the server its receive and state)
  setup do
    start_causeway!()
    %{b: b, c: c} = peers!([:b, :c])

    counter = :erpc.call(b, ClusterHelper, :counter, [0])
    client = :erpc.call(c, ClusterHelper, :call_recorded, [counter, [{:add, 1}, {:add, 2}]])
    :ok = :erpc.call(b, Causeway, :flush, [])
    %{b: b, c: c, counter: counter, client: client}
  end

  defp export!(opts) do
    path = Path.join(tmp_dir!("trace"), "trace.json")
    File.mkdir_p!(Path.dirname(path))
    {:ok, info} = Causeway.Export.chrome_trace(path, opts)
    {info, path |> File.read!() |> JSONParser.parse!() |> Map.fetch!("traceEvents")}
  end

  defp track(evs, proc_name, thread_name) do
    [pid] =
      for %{"name" => "process_name", "args" => %{"name" => ^proc_name}} = e <- evs, do: e["pid"]

    [tid] =
      for %{"name" => "thread_name", "pid" => ^pid, "args" => %{"name" => ^thread_name}} = e <-
            evs,
          do: e["tid"]

    {pid, tid}
  end

  defp on(evs, {pid, tid}, ph),
    do:
      evs
      |> Enum.filter(&(&1["pid"] == pid and &1["tid"] == tid and &1["ph"] == ph))
      |> Enum.sort_by(& &1["ts"])

  test "a Chrome trace of a cross-node call: a process per node, slices, the flow across", ctx do
    {info, evs} = export!(nodes: [ctx.b, ctx.c], limit: :infinity)
    assert %{nodes: 2, missing: []} = info

    procs = for %{"name" => "process_name"} = e <- evs, do: e["args"]["name"]
    assert Enum.sort(procs) == Enum.sort([to_string(ctx.b), to_string(ctx.c)])

    client = track(evs, to_string(ctx.c), inspect(ctx.client))
    server = track(evs, to_string(ctx.b), inspect(ctx.counter))
    assert elem(client, 0) != elem(server, 0)

    # calls are slices on their node's thread
    assert ["Client.call/1", "Client.call/1"] = Enum.map(on(evs, client, "B"), & &1["name"])
    assert length(on(evs, client, "E")) == 2

    assert Enum.map(on(evs, server, "B"), & &1["name"]) ==
             ["Causeway.ClusterHelper.Counter.init/1"] ++
               List.duplicate("Causeway.ClusterHelper.Counter.handle_call/3", 2)

    # each request's send on c flows to its receive on b, in order, never backwards
    starts = on(evs, client, "s")
    ends = on(evs, server, "f")
    assert length(starts) == 2 and length(ends) == 2
    assert Enum.map(starts, & &1["id"]) == Enum.map(ends, & &1["id"])
    assert Enum.uniq(Enum.map(starts, & &1["id"])) |> length() == 2
    for {s, f} <- Enum.zip(starts, ends), do: assert(f["ts"] >= s["ts"])

    receives =
      on(evs, server, "X") |> Enum.filter(&(&1["name"] == "receive")) |> Enum.map(& &1["args"])

    assert Enum.map(receives, & &1["message"]) == ["{:add, 1}", "{:add, 2}"]

    # without nodes:, this node's own (empty) store is all there is
    assert {%{events: 0}, []} = export!(limit: :infinity)
  end

  test "a receive is never drawn before its send, whatever the clock offsets say", ctx do
    {:ok, evs, _} = Causeway.Cluster.events(nodes: [ctx.b, ctx.c], limit: :infinity)
    # offsets 10 s off: b's events would come 10 s before c's sends
    trace = Causeway.Export.chrome_events(evs, offsets: %{ctx.b => 10_000_000_000})
    trace = JSONParser.parse!(Causeway.JSON.encode!(%{"traceEvents" => trace}))["traceEvents"]

    client = track(trace, to_string(ctx.c), inspect(ctx.client))
    server = track(trace, to_string(ctx.b), inspect(ctx.counter))
    starts = on(trace, client, "s")
    ends = on(trace, server, "f")
    assert length(starts) == 2 and length(ends) == 2
    for {s, f} <- Enum.zip(starts, ends), do: assert(f["ts"] >= s["ts"])

    # while b's other events stay where the offsets put them
    first_b =
      trace
      |> Enum.filter(&(&1["pid"] == elem(server, 0) and &1["ts"]))
      |> Enum.min_by(& &1["ts"])

    assert first_b["ts"] < hd(starts)["ts"]

    assert_raise ArgumentError, ~r/:offsets/, fn ->
      Causeway.Export.chrome_events(evs, offsets: :nope)
    end
  end

  test "a merged query never puts a receive before its send, whatever the offsets say", ctx do
    # an offset for b that is 10 s wrong (as if measured badly): corrected,
    # b's receives would come 10 s before c's sends
    :ets.insert(
      Causeway.Cluster.Offsets,
      {ctx.b, 10_000_000_000, System.monotonic_time(:millisecond)}
    )

    on_exit(&Causeway.Cluster.forget_offsets/0)

    {:ok, evs, %{offsets: %{}}} = Causeway.Cluster.events(nodes: [ctx.b, ctx.c], limit: :infinity)
    at = evs |> Enum.with_index() |> Map.new(fn {e, i} -> {{e.node, e.id}, i} end)

    sends = for e <- evs, e.type == :message_send, e.node == ctx.c, e.pid == ctx.client, do: e

    receives =
      for e <- evs, e.type == :message_receive, e.node == ctx.b, e.pid == ctx.counter, do: e

    assert length(sends) >= 2 and length(receives) == 2

    for {s, r} <- Causeway.Cluster.Links.pair_across(evs),
        do: assert(at[{r.node, r.id}] > at[{s.node, s.id}])

    assert length(Causeway.Cluster.Links.pair_across(evs)) == 2
    # b's other events keep the place the offset gives them: before c's
    [first | _] = evs
    assert first.node == ctx.b
  end

  test "a Mermaid diagram of pids on two nodes labels each participant with its node", ctx do
    text = Causeway.Export.mermaid_text(pids: [ctx.client, ctx.counter])

    assert text =~ "participant P1 as #{inspect(ctx.client)} on #{ctx.c}\n"
    assert text =~ "participant P2 as #{inspect(ctx.counter)} on #{ctx.b}\n"

    arrows = text |> String.split("\n") |> Enum.filter(&(&1 =~ "P1->>P2" or &1 =~ "P1-)P2"))
    assert arrows == ["    P1->>P2: {:add, 1}", "    P1->>P2: {:add, 2}"]

    # asked only here, the receives on b are not found
    local = Causeway.Export.mermaid_text(pids: [ctx.client, ctx.counter], nodes: [node()])
    refute local =~ "P1->>P2"
  end
end
