defmodule Causeway.Cluster.Links do
  @moduledoc """
  Links between events recorded on different nodes, made at query time
  (each node's correlator sees only its own events, so a send to another
  node's process has no receive there, and a process spawned from another
  node has no spawn): the rules `Causeway.message_flow/3`,
  `Causeway.causal_chain/2` and the exports use with `nodes:` or over
  `Causeway.open([dir_a, dir_b])`.

    * **send → receive**: first in, first out per receiver, sender and
      message — the k-th receive by `r` of `m` from `s` is the k-th send of
      `m` from `s` to `r`, so duplicate messages pair in order and a second
      sender's messages never mix in. A `GenServer.call` counts as its
      request: a send of `{:"$gen_call", {s, tag}, request}` pairs with the
      receive of `request` from `s` that an instrumented or watched
      `handle_call/3` records. A receive recorded without its sender is
      taken by a send only when no receive with the sender is left (and is
      never followed back, its sender being unknown).
    * **child → parent**: a process whose chain stops is looked up in the
      `process_spawn` events of the other nodes (`data.child`), recorded by
      a parent that spawned it there (`Node.spawn/2`, or a recorded spawn
      of any kind).

      Causeway.message_flow(pid_on_a, pid_on_b, nodes: :all)
      Causeway.causal_chain(change_on_b.id, nodes: :all)

  The functions here run on the node that holds the events (over
  `:erpc`, by `Causeway.Cluster`) or on a store opened here; only their
  one answer crosses the network. Each scan is bounded (`@max_scan`
  events).
  """

  alias Causeway.Query

  # events one lookup reads at most
  @max_scan 200_000
  @page 1_000

  @doc "Whether a sent message is the one received (itself, or a call's request)."
  @spec same_message?(term(), term()) :: boolean()
  def same_message?(sent, received) do
    case sent do
      ^received -> true
      {:"$gen_call", {_from, _tag}, ^received} -> true
      _ -> false
    end
  end

  @doc """
  For a send, the receive it pairs with among `receives` (the receiver's,
  oldest first) and the receives left: `{receive | nil, rest}`.
  """
  @spec take_receive([Causeway.Event.t()], Causeway.Event.t()) ::
          {Causeway.Event.t() | nil, [Causeway.Event.t()]}
  def take_receive(receives, send) do
    from = send.pid
    msg = send.data.message

    case Enum.split_while(
           receives,
           &(not (&1.data.from == from and same_message?(msg, &1.data.message)))
         ) do
      {before, [r | after_]} ->
        {r, before ++ after_}

      {_, []} ->
        case Enum.split_while(
               receives,
               &(not (&1.data.from == nil and same_message?(msg, &1.data.message)))
             ) do
          {before, [r | after_]} -> {r, before ++ after_}
          {_, []} -> {nil, receives}
        end
    end
  end

  @doc """
  Among `events` (from several nodes, in merged order), the sends to a
  process on another node paired with that process's receives among them,
  by the rules above: `[{send, receive}]`. Receives that their own node
  already linked to a send are left out.
  """
  @spec pair_across([Causeway.Event.t()]) :: [{Causeway.Event.t(), Causeway.Event.t()}]
  def pair_across(events) do
    receives =
      events
      |> Enum.filter(&(&1.type == :message_receive and not linked?(&1)))
      |> Enum.group_by(& &1.pid)

    {pairs, _left} =
      events
      |> Enum.filter(&remote_send?/1)
      |> Enum.flat_map_reduce(receives, fn s, left ->
        case take_receive(Map.get(left, s.data.to, []), s) do
          {nil, _} -> {[], left}
          {r, rest} -> {[{s, r}], Map.put(left, s.data.to, rest)}
        end
      end)

    pairs
  end

  defp linked?(%{links: links}) when is_list(links),
    do: Enum.any?(links, &match?({:receives, _}, &1))

  defp linked?(_), do: false

  defp remote_send?(%{type: :message_send, node: n, data: %{to: to}}) when is_pid(to),
    do: to_string(node(to)) != to_string(n)

  defp remote_send?(_), do: false

  @doc false
  # On the receiver's node: a receive whose sender is known, and how many
  # receives of the same message from the same sender its process had
  # before it. %{receive:, from:, message:, rank:} or nil.
  def receive_rank(receive_id, opts) do
    target = Keyword.take(opts, [:store, :instance])

    case Query.event(receive_id, target) do
      %{type: :message_receive, pid: r, data: %{from: from, message: m}} = rcv
      when is_pid(from) and is_pid(r) ->
        [pid: r, type: :message_receive, links: false]
        |> scan(target)
        |> Enum.reduce_while(0, fn e, rank ->
          cond do
            e.id == rcv.id -> {:halt, {:found, rank}}
            e.data.from == from and e.data.message == m -> {:cont, rank + 1}
            true -> {:cont, rank}
          end
        end)
        |> case do
          {:found, rank} -> %{receive: rcv, from: from, message: m, rank: rank}
          _ -> nil
        end

      _ ->
        nil
    end
  end

  @doc false
  # On the sender's node: the `rank`-th (from 0) send of `message` from
  # `sender` to `receiver`, or nil.
  def nth_send(sender, receiver, message, rank, opts)
      when is_pid(sender) and is_integer(rank) and rank >= 0 do
    [pid: sender, type: :message_send, links: false]
    |> scan(Keyword.take(opts, [:store, :instance]))
    |> Stream.filter(&(&1.data.to == receiver and same_message?(&1.data.message, message)))
    |> Stream.drop(rank)
    |> Enum.at(0)
  end

  @doc false
  # On a parent's node: the latest recorded spawn of `child` at or before
  # `until` (a DateTime on this node's clock), or nil.
  def find_spawn(child, until, opts) when is_pid(child) do
    [type: :process_spawn, until: until, order: :desc, links: false]
    |> scan(Keyword.take(opts, [:store, :instance]))
    |> Enum.find(&match?(%{data: %{child: ^child}}, &1))
  end

  defp scan(filters, target),
    do: Query.stream(filters ++ target ++ [page_size: @page, limit: @max_scan])
end
