# Cluster queries (`mix bench cluster`): the same query over 1, 2, 4 and 8
# peer nodes on this machine, each holding the same events (the demo
# workload), next to the same query on this node alone, in one run:
# latency per query and merged events per second. BENCH_CLUSTER_MAX=4 for
# fewer peers.
alias Causeway.Bench, warn: false

defmodule Bench.Cluster do
  def distribute! do
    epmd = System.find_executable("epmd") || Path.join(:code.root_dir(), "bin/epmd")
    System.cmd(epmd, ["-daemon"])
    Process.sleep(200)

    {:ok, _} =
      Node.start(:"causeway_bench_#{System.unique_integer([:positive])}@127.0.0.1", :longnames)
  end

  # a peer with its own instance (under its session supervisor, so it lives
  # on) and the demo workload recorded once
  def peer!(i, rounds) do
    args = Enum.flat_map(:code.get_path(), fn p -> [~c"-pa", p] end)

    {:ok, peer, node} =
      :peer.start(%{name: :"bench_peer_#{i}", host: ~c"127.0.0.1", longnames: true, args: args})

    {:ok, _} = :erpc.call(node, Application, :ensure_all_started, [:causeway], 60_000)
    dir = Bench.tmp_dir("cluster-#{i}")

    {:ok, _} =
      :erpc.call(node, DynamicSupervisor, :start_child, [
        Causeway.SessionSupervisor,
        {Causeway, dir: dir}
      ])

    record(node, rounds)
    {peer, node}
  end

  def record(node, rounds) do
    :erpc.call(node, Causeway.Demo, :run, [4, rounds], 120_000)
    :ok = :erpc.call(node, Causeway, :flush, [], 60_000)
  end

  # one run: `reps` queries; units are the events returned
  def query(opts, reps) do
    {n, ns} =
      Bench.time(fn ->
        Enum.reduce(1..reps, 0, fn _, acc -> acc + length(Causeway.events(opts)) end)
      end)

    {n, ns}
  end
end

rounds = String.to_integer(System.get_env("BENCH_CLUSTER_ROUNDS", "50"))
max = String.to_integer(System.get_env("BENCH_CLUSTER_MAX", "8"))
Bench.Cluster.distribute!()
{:ok, _} = Causeway.start_link(dir: Bench.tmp_dir("cluster-local"))
Bench.Cluster.record(node(), rounds)
local_count = length(Causeway.events(limit: :infinity, links: false))
peers = for i <- 1..max, do: Bench.Cluster.peer!(i, rounds)
nodes = Enum.map(peers, &elem(&1, 1))
IO.puts("each node holds #{local_count} events (the demo workload, #{rounds} rounds)")

limit = 2_000
sizes = Enum.filter([1, 2, 4, 8], &(&1 <= max))

for {title, unit_note, reps} <- [
      {"events(limit: #{limit}, links: false): latency per query", "query", 5},
      {"events(limit: :infinity, links: false): merged events", "event", 1}
    ] do
  lim = if unit_note == "query", do: limit, else: :infinity

  cases =
    [
      {"this node alone (no nodes:)",
       fn ->
         {n, ns} = Bench.Cluster.query([limit: lim, links: false], reps)
         if unit_note == "query", do: {reps, ns}, else: {n, ns}
       end}
    ] ++
      for k <- sizes do
        {"nodes: #{k} peer#{if k > 1, do: "s"}",
         fn ->
           {n, ns} =
             Bench.Cluster.query(
               [nodes: Enum.take(nodes, k), limit: lim, links: false, timeout: 60_000],
               reps
             )

           if unit_note == "query", do: {reps, ns}, else: {n, ns}
         end}
      end

  Bench.compare(title, cases, runs: 5, unit: unit_note)
end

for {peer, _} <- peers, do: :peer.stop(peer)
Causeway.stop()
