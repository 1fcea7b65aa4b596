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
      taken by a send only when no receive with the sender is left.
      A receive recorded without its sender (a traced `receive`: the BEAM
      does not say who sent it) is followed back by the same rule with
      every sender on the other nodes: the k-th such receive by `r` of `m`
      is the k-th send of `m` to `r` from another node, in merged time
      order (a choice among several senders is counted in `ambiguous`).
    * **sends to a registered name**: a traced send to `{name, node}` keeps
      `data.to` as it was given. It pairs with a receive on `node` by the
      process that had the name. `message_flow` and `causal_chain` ask
      `node` which process is registered under it now (when that process
      is alive there); otherwise (a process that ended, stores opened after
      the fact) and in merged timelines and exports, the name's process is
      the first process on `node` with a receive of that message from that
      sender not taken by another send. So a sender that sends the same
      message both to a name and to another process of the same node, the
      name no longer known, can have its two sends swapped.
    * **child → parent**: a process whose chain stops is looked up in the
      `process_spawn` events of the other nodes (`data.child`), recorded by
      a parent that spawned it there (`Node.spawn/2`, `:erpc.call/4`, or a
      recorded spawn of any kind). A traced parent's remote spawn is
      recorded from the reply it receives (the BEAM traces no `spawn` for
      it): `Node.spawn/2`'s when the child starts, `:erpc.call/4`'s when
      the call returns, which is after the child's own events; the spawn
      before the child's first event is taken, otherwise the first after.

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

    pos = events |> Enum.with_index() |> Map.new(fn {e, i} -> {{e.node, e.id}, i} end)

    {pairs, _left} =
      events
      |> Enum.filter(&remote_send?/1)
      |> Enum.flat_map_reduce(receives, fn s, left ->
        to = receiver(s, left, pos)

        case take_receive(Map.get(left, to, []), s) do
          {nil, _} -> {[], left}
          {r, rest} -> {[{s, r}], Map.put(left, to, rest)}
        end
      end)

    pairs
  end

  # the receiver of a send among the receives left: its pid, or for a
  # registered name the process on that node whose matching receive comes
  # first
  defp receiver(%{data: %{to: to}}, _left, _pos) when is_pid(to), do: to

  defp receiver(%{data: %{to: {_name, n}}} = s, left, pos) do
    n = to_string(n)

    left
    |> Enum.flat_map(fn {pid, rs} ->
      with true <- is_pid(pid) and to_string(node(pid)) == n,
           %{} = r <-
             Enum.find(
               rs,
               &(&1.data.from == s.pid and same_message?(s.data.message, &1.data.message))
             ) do
        [{pos[{r.node, r.id}], pid}]
      else
        _ -> []
      end
    end)
    |> Enum.min(fn -> {nil, nil} end)
    |> elem(1)
  end

  @doc false
  # Whether a send was addressed to `receiver`: by its pid, or by a name
  # on its node (one of `names`, or any when they are `:unknown`).
  def addressed?(%{data: %{to: to}}, receiver, names) do
    case to do
      ^receiver ->
        true

      {name, n} when is_pid(receiver) ->
        to_string(n) == to_string(node(receiver)) and (names == :unknown or name in names)

      _ ->
        false
    end
  end

  @doc false
  # The names a process is known by here: [name] for a live local process
  # registered under one, else :unknown (a process that ended, or one
  # of a store from another node).
  def names_of(pid) when is_pid(pid) do
    with true <- node(pid) == node(),
         {:registered_name, name} when is_atom(name) <- Process.info(pid, :registered_name) do
      [name]
    else
      _ -> :unknown
    end
  end

  defp linked?(%{links: links}) when is_list(links),
    do: Enum.any?(links, &match?({:receives, _}, &1))

  defp linked?(_), do: false

  defp remote_send?(%{type: :message_send, node: n, data: %{to: to}}) when is_pid(to),
    do: to_string(node(to)) != to_string(n)

  defp remote_send?(%{type: :message_send, node: n, data: %{to: {name, at}}})
       when is_atom(name) or is_binary(name),
       do: to_string(at) != to_string(n)

  defp remote_send?(_), do: false

  @doc false
  # On the receiver's node: a receive, and how many receives of the same
  # message from the same sender its process had before it (for one
  # recorded without its sender: how many such receives without a sender
  # and not linked here). %{receive:, from:, message:, rank:, names:} or nil.
  def receive_rank(receive_id, opts) do
    target = Keyword.take(opts, [:store, :instance])

    case Query.event(receive_id, target) do
      %{type: :message_receive, pid: r, data: %{from: from, message: m}} = rcv
      when is_pid(r) and (is_pid(from) or from == nil) ->
        same? =
          if from == nil,
            do: &(&1.data.from == nil and &1.data.message == m and not linked?(&1)),
            else: &(&1.data.from == from and &1.data.message == m)

        [pid: r, type: :message_receive, links: from == nil]
        |> scan(target)
        |> Enum.reduce_while(0, fn e, rank ->
          cond do
            e.id == rcv.id -> {:halt, {:found, rank}}
            same?.(e) -> {:cont, rank + 1}
            true -> {:cont, rank}
          end
        end)
        |> case do
          {:found, rank} ->
            %{receive: rcv, from: from, message: m, rank: rank, names: names_of(r)}

          _ ->
            nil
        end

      _ ->
        nil
    end
  end

  @doc false
  # On the sender's node: the `rank`-th (from 0) send of `message` from
  # `sender` to `receiver` (by pid, or by one of its `names`), or nil.
  def nth_send(sender, receiver, names, message, rank, opts)
      when is_pid(sender) and is_integer(rank) and rank >= 0 do
    [pid: sender]
    |> sends_of(receiver, names, message, opts)
    |> Stream.drop(rank)
    |> Enum.at(0)
  end

  @doc false
  # On a node of possible senders: the first `n` sends of `message` to
  # `receiver` (by pid or one of its `names`) from any process here.
  def sends_to(receiver, names, message, n, opts)
      when is_pid(receiver) and is_integer(n) and n > 0 do
    [] |> sends_of(receiver, names, message, opts) |> Enum.take(n)
  end

  # the sends (of those `filters` select) of `message` to `receiver`
  defp sends_of(filters, receiver, names, message, opts) do
    (filters ++ [type: :message_send, links: false])
    |> scan(Keyword.take(opts, [:store, :instance]))
    |> Stream.filter(
      &(addressed?(&1, receiver, names) and same_message?(&1.data.message, message))
    )
  end

  @doc false
  # On a parent's node: the latest recorded spawn of `child` at or before
  # `until` (a DateTime on this node's clock), or nil.
  def find_spawn(child, until, opts) when is_pid(child) do
    target = Keyword.take(opts, [:store, :instance])
    spawn_of? = &match?(%{data: %{child: ^child}}, &1)

    # an :erpc spawn is recorded when the call returns: after the child ran
    Enum.find(
      scan([type: :process_spawn, until: until, order: :desc, links: false], target),
      spawn_of?
    ) ||
      Enum.find(scan([type: :process_spawn, since: until, links: false], target), spawn_of?)
  end

  defp scan(filters, target),
    do: Query.stream(filters ++ target ++ [page_size: @page, limit: @max_scan])
end
