defmodule Causeway.Cluster.Chain do
  @moduledoc """
  `Causeway.causal_chain/2` across nodes (`nodes:`) or across stores
  opened together (`Causeway.open([dir_a, dir_b])`): each node walks its
  own part of the chain; where a part stops at a boundary between nodes,
  the walk goes on on the other node, with the links of
  `Causeway.Cluster.Links`:

    * a `message_receive` whose sender is on another node →
      (`:receives`) the sender's `message_send` there (a `GenServer.call`'s
      request included, and a send to the receiver's registered name),
      and on from the send: the caller's call, what caused it, ...;
    * a `message_receive` recorded without its sender and not linked on
      its own node → (`:receives`) the send of that message to that
      process from another node, first in first out over the senders of
      every other node asked (a choice between several senders is counted
      in the answer's `ambiguous`);
    * the first cause of a process that has no cause left on its own node
      → (`:spawned_by`) the `process_spawn` of that process recorded by
      its parent on another node (`Node.spawn/2`).

      # a state change on node b, caused by a GenServer.call from node a
      [{change, nil}, {receive, :caused_by}, {send, :receives}, {call, :caused_by} | _] =
        Causeway.causal_chain(change.id, nodes: :all)

  The events keep their `node`. Only the nodes asked are followed to (with
  `nodes: :all`, every connected one); a node that does not answer is
  named in `missing` (`Causeway.Cluster.causal_chain/2`) or a warning,
  and the chain stops there. `:max` (default 1000) caps the whole chain.
  """

  alias Causeway.{Cluster, Query}

  @doc false
  # {:ok, chain, %{missing:, offsets:}}
  def causal_chain(id, opts) do
    id = Query.id!(id, "Causeway.causal_chain/2")
    ctx = context!(opts)
    start = Enum.find_value(ctx.sources, &local_chain(&1, id, ctx.max, ctx))

    chain =
      case start do
        nil -> []
        {src, chain} -> extend(src, chain, ctx.max, MapSet.new(), ctx)
      end

    {:ok, chain,
     %{
       missing: missing(),
       offsets: ctx.offsets,
       ambiguous: Process.get({__MODULE__, :ambiguous}, 0)
     }}
  after
    Process.delete(__MODULE__)
    Process.delete({__MODULE__, :ambiguous})
  end

  defp context!(opts) do
    case Keyword.get(opts, :store) do
      %Causeway.Stores{stores: stores} ->
        query = check!(Keyword.delete(opts, :store))
        {timeout, query} = Keyword.pop(query, :timeout, 5_000)
        srcs = Enum.map(stores, &{:store, &1})
        # a store's node: the node its events were recorded on
        node_of =
          Map.new(srcs, fn {:store, s} = src ->
            case Query.events_page(store: s, limit: 1, links: false) do
              {[e | _], _, _} -> {src, to_string(e.node)}
              _ -> {src, nil}
            end
          end)

        %{
          sources: srcs,
          by_node: Map.new(node_of, fn {src, n} -> {n, src} end),
          node_of: node_of,
          max: max!(query),
          query: Keyword.take(query, [:instance]),
          timeout: timeout,
          offsets: %{}
        }

      _ ->
        {nodes, timeout, query} = Cluster.split!(opts)
        query = check!(query)
        srcs = Enum.map(nodes, &{:node, &1})

        %{
          sources: srcs,
          by_node: Map.new(nodes, &{to_string(&1), {:node, &1}}),
          node_of: Map.new(nodes, &{{:node, &1}, to_string(&1)}),
          max: max!(query),
          query: Keyword.take(query, [:instance]),
          timeout: timeout,
          offsets: Cluster.clock_offsets(Enum.filter(nodes, &(&1 == node() or &1 in Node.list())))
        }
    end
  end

  defp check!(query),
    do:
      Causeway.Options.keyword!(
        query,
        [:max, :instance, :store, :timeout],
        "Causeway.causal_chain/2"
      )

  defp max!(query) do
    case Query.count!(query, :max, 1000) do
      0 -> :infinity
      n -> n
    end
  end

  # the chain of `id` as the source alone knows it: {src, chain} or nil
  defp local_chain(src, id, max, ctx) do
    case ask(src, :causal_chain, [id, ctx.query ++ [max: max]], ctx) do
      [_ | _] = chain -> {src, chain}
      _ -> nil
    end
  end

  defp extend(src, chain, max, seen, ctx) do
    chain = chain |> Enum.take_while(fn {e, _} -> not MapSet.member?(seen, key(e)) end)
    chain = if max == :infinity, do: chain, else: Enum.take(chain, max)
    seen = Enum.reduce(chain, seen, &MapSet.put(&2, key(elem(&1, 0))))
    left = if max == :infinity, do: :infinity, else: max - length(chain)

    if left == 0 or chain == [] do
      chain
    else
      case across(src, chain, ctx) do
        {prefix, {next_src, next, via}} ->
          prefix ++ continue(next_src, next, via, left_after(max, prefix), seen, ctx)

        nil ->
          chain
      end
    end
  end

  defp left_after(:infinity, _), do: :infinity
  defp left_after(max, prefix), do: max - length(prefix)

  defp continue(src, event, via, max, seen, ctx) do
    if MapSet.member?(seen, key(event)) or max == 0 do
      []
    else
      case local_chain(src, event.id, max, ctx) do
        {^src, [{first, nil} | rest]} -> extend(src, [{first, via} | rest], max, seen, ctx)
        _ -> []
      end
    end
  end

  # where the chain crosses to another node: {chain up to there, {source,
  # event there, link}} or nil
  defp across(src, chain, ctx) do
    indexed = Enum.with_index(chain)

    remote_receive =
      Enum.find_value(indexed, fn {{e, _}, i} ->
        next_via =
          case Enum.at(chain, i + 1) do
            {_, via} -> via
            nil -> nil
          end

        if next_via != :receives and remote_receive?(e) do
          case send_of(src, e, ctx) do
            nil -> nil
            hop -> {Enum.take(chain, i + 1), hop}
          end
        end
      end)

    remote_receive || spawn_hop(chain, src, ctx)
  end

  defp remote_receive?(%{type: :message_receive, node: n, data: %{from: from}})
       when is_pid(from),
       do: to_string(node(from)) != to_string(n)

  # without a sender: one its own node did not link to a send
  defp remote_receive?(%{type: :message_receive, data: %{from: nil}} = e),
    do: not Enum.any?(e.links || [], &match?({:receives, _}, &1))

  defp remote_receive?(_), do: false

  defp send_of(src, %{data: %{from: nil}} = rcv, ctx) do
    with %{message: m, rank: rank, names: names} <-
           ask(src, :receive_rank, [rcv.id, ctx.query], ctx) do
      candidates =
        for other <- ctx.sources -- [src],
            s <- List.wrap(ask(other, :sends_to, [rcv.pid, names, m, rank + 1, ctx.query], ctx)),
            do: {other, s}

      ordered = Enum.sort_by(candidates, fn {_, s} -> Cluster.event_key(s, ctx.offsets) end)

      if ordered
         |> Enum.take(rank + 1)
         |> Enum.uniq_by(fn {_, s} -> {s.node, s.pid} end)
         |> length() > 1,
         do: Process.put({__MODULE__, :ambiguous}, Process.get({__MODULE__, :ambiguous}, 0) + 1)

      case Enum.at(ordered, rank) do
        {other, send} -> {other, send, :receives}
        nil -> nil
      end
    else
      _ -> nil
    end
  end

  defp send_of(src, rcv, ctx) do
    with sender_src when sender_src != nil <- ctx.by_node[to_string(node(rcv.data.from))],
         %{from: from, message: m, rank: rank, names: names} <-
           ask(src, :receive_rank, [rcv.id, ctx.query], ctx),
         %Causeway.Event{} = send <-
           ask(sender_src, :nth_send, [from, rcv.pid, names, m, rank, ctx.query], ctx) do
      {sender_src, send, :receives}
    else
      _ -> nil
    end
  end

  # the chain stops in a process: its spawn, recorded on another node
  defp spawn_hop(chain, src, ctx) do
    {last, _} = List.last(chain)

    if is_pid(last.pid) do
      Enum.find_value(ctx.sources -- [src], fn other ->
        until = until(last, src, other, ctx)

        case ask(other, :find_spawn, [last.pid, until, ctx.query], ctx) do
          %Causeway.Event{} = spawn -> {chain, {other, spawn, :spawned_by}}
          _ -> nil
        end
      end)
    end
  end

  # the last moment, on `other`'s clock, the spawn can have happened: the
  # child's event, put on that clock, and some slack (the offsets' error;
  # unknown offsets after the fact: a minute)
  defp until(event, {:node, _} = src, {:node, o}, ctx) do
    {:node, n} = src
    shift = Map.get(ctx.offsets, o, 0) - Map.get(ctx.offsets, n, 0)
    DateTime.add(event.wall_time, shift + 2_000_000_000, :nanosecond)
  end

  defp until(event, _src, _other, _ctx), do: DateTime.add(event.wall_time, 60, :second)

  defp key(e), do: {to_string(e.node), e.id}

  defp ask(src, fun, args, ctx) do
    case Cluster.ask_one(src, fun, args, ctx.timeout) do
      {:ok, r} ->
        r

      {:missing, miss} ->
        Process.put(__MODULE__, [miss | Process.get(__MODULE__, [])])
        nil
    end
  end

  defp missing, do: Process.get(__MODULE__, []) |> Enum.reverse() |> Enum.uniq()
end
