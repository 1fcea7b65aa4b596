defmodule Causeway.Cluster do
  @moduledoc """
  Questions to a cluster: each node records into its own local store
  (nothing crosses the network on the hot path); a query with `nodes:`
  runs on every named node's own instance over distribution (`:erpc`) and
  the answers are merged here.

      Causeway.events(nodes: :all, module: MyApp.Cart, limit: 100)
      Causeway.state_history(pid_on_b, nodes: :all)
      Causeway.metrics(nodes: :all)        # per node, and totals

      {:ok, events, %{missing: []}} = Causeway.Cluster.events(nodes: :all, limit: 10)

  ## The shape of an answer

  Every function here returns `{:ok, result, %{missing: [{node, reason}],
  offsets: %{node => ns}}}`: the nodes that did not answer are named with
  why (`:not_connected`, `:timeout`, `{:error, exception}`, `:noconnection`,
  `:no_instance`...). The plain functions of `Causeway` called with `nodes:`
  return the merged result and log a warning naming the missing nodes.
  A stream (`stream_events/1`) can lose a node after it is returned:
  `missing/1` gives those too.

  ## Options

    * `:nodes` — `:all` (this node and every connected node) or a list of
      nodes. Only nodes already connected are asked: a query never
      connects to a node (`Node.connect/1` is yours to call);
    * `:timeout` — how long to wait for the slowest node (default 5 000
      ms): a node that is down, disconnected or slower is reported missing
      in bounded time, never a hang;
    * every other option is the query's own, sent as it is (terms only: no
      funs or code cross the network), and `:limit` applies on each node
      before anything crosses the network, then to the merged result.

  ## One time axis

  Merged events are ordered by wall time corrected by each node's clock
  offset to this one (`clock_offsets/1`: five round trips over
  distribution, the sample with the best round-trip time kept; measured at
  a node's first query and again when the last measurement is older than
  10 s), then by
  node and id; events keep their `node`. `Causeway.metrics(nodes: :all)`
  reports the offsets. The correction can be off by up to half that best
  round trip (less than a millisecond on a quiet LAN, more on a loaded
  host): two events on different nodes closer together than that may come
  out in either order. Within one node the order is always the node's own.
  """

  require Logger

  @default_timeout 5_000

  @doc "Events matching the filters of `Causeway.events/1`, from every node, merged."
  def events(opts), do: merged(opts, :events, fn q -> [q] end, &merge_events(&1, &2, opts))

  @doc "A pid's state changes (the pid names its node), as `Causeway.state_history/2`."
  def state_history(pid, opts),
    do: merged(opts, :state_history, fn q -> [pid, q] end, &merge_events(&1, &2, []))

  @doc """
  Messages between two processes, which may be on different nodes, as
  `Causeway.message_flow/3`. A send whose receiver is on another node is
  paired there, at query time, with the receiver's `message_receive` of the
  same message from the same sender (first in, first out per receiver,
  sender and message, so duplicates pair in order; a `GenServer.call`'s
  `{:"$gen_call", from, request}` pairs with the `request` its
  `handle_call/3` records; a receive recorded without its sender is taken
  only when no receive with the sender is left; a traced send to
  `{name, node}` is `b`'s when `b` is registered under that name now, or,
  `b`'s name unknown, when one of `b`'s receives pairs with it). See
  `Causeway.Cluster.Links`.
  """
  def message_flow(a, b, opts) do
    with {:ok, flows, meta} <-
           merged(opts, :message_flow, fn q -> [a, b, q] end, fn per_node, offsets ->
             per_node
             |> Enum.flat_map(fn {_node, flows} -> flows end)
             |> Enum.uniq_by(&{&1.send.node, &1.send.id})
             |> Enum.sort_by(&event_key(&1.send, offsets))
           end) do
      flows =
        (flows ++ named_sends(a, b, opts)) |> Enum.sort_by(&event_key(&1.send, meta.offsets))

      {:ok, link_across(flows, opts), meta}
    end
  end

  # a's sends to a registered name on b's node (another node) that may be
  # b's, as flows to pair with b's receives: b's name is asked of its node
  # (known while b is alive there; otherwise any name on that node is b's
  # if one of its receives pairs with the send)
  defp named_sends(a, b, opts) when is_pid(a) and is_pid(b) and node(a) != node(b) do
    timeout = Keyword.get(opts, :timeout, @default_timeout)

    names =
      case ask_one({:node, node(b)}, :names_of, [b], timeout) do
        {:ok, names} when is_list(names) -> names
        _ -> :unknown
      end

    q = [nodes: [node(a)], pid: a, type: :message_send, limit: :infinity, links: false]

    case events(q ++ Keyword.take(opts, [:timeout])) do
      {:ok, sends, _} ->
        for s <- sends,
            match?({_, _}, s.data.to),
            Causeway.Cluster.Links.addressed?(s, b, names),
            do: %{send: s, receive: nil, to: b, sure: names != :unknown}

      _ ->
        []
    end
  end

  defp named_sends(_a, _b, _opts), do: []

  # pairs the sends to another node's process with that process's receives
  defp link_across(flows, opts) do
    receiver = fn
      %{to: b} -> b
      %{send: %{data: %{to: to}}} -> to
    end

    remote? = fn %{send: s, receive: r} = f ->
      to = receiver.(f)
      r == nil and is_pid(to) and to_string(node(to)) != to_string(s.node)
    end

    receivers = for f <- flows, remote?.(f), uniq: true, do: receiver.(f)

    receives =
      Map.new(receivers, fn r ->
        q = [nodes: [node(r)], pid: r, type: :message_receive, limit: :infinity, links: false]
        q = q ++ Keyword.take(opts, [:timeout])
        {:ok, evs, _} = events(q)
        {r, evs}
      end)

    {flows, _left} =
      Enum.flat_map_reduce(flows, receives, fn f, left ->
        if remote?.(f) do
          to = receiver.(f)
          {match, rest} = Causeway.Cluster.Links.take_receive(Map.get(left, to, []), f.send)

          case f do
            # a send to a name not known to be b's, that no receive of b's
            # takes, went to another process
            %{sure: false} when match == nil -> {[], left}
            _ -> {[%{send: f.send, receive: match}], Map.put(left, to, rest)}
          end
        else
          {[f], left}
        end
      end)

    flows
  end

  @doc """
  `Causeway.stream_events/1` over every node, lazily: `{:ok, stream,
  %{missing:, offsets:, ref:}}`, where `missing` names the nodes that did
  not give their first page; `missing/1` adds those lost while the stream
  ran. See `Causeway.Cluster.Stream`.
  """
  @spec stream_events(keyword()) :: {:ok, Enumerable.t(), map()}
  def stream_events(opts), do: Causeway.Cluster.Stream.stream(opts)

  @doc """
  Every node missing from a `stream_events/1` answer so far: those that
  did not give their first page (its `missing`), then those lost while the
  stream ran, in the order they were lost (taken from this process's
  mailbox, where the stream reports them; see `Causeway.Cluster.Stream`).
  """
  @spec missing(map()) :: [{node() | String.t(), term()}]
  def missing(info), do: Causeway.Cluster.Stream.missing(info)

  @doc """
  `Causeway.causal_chain/2` across nodes: where a node's part of the chain
  stops at a receive of a message sent from another node, or at the
  first cause of a process spawned from another node, it goes on there.
  See `Causeway.Cluster.Chain`.
  """
  @spec causal_chain(non_neg_integer(), keyword()) ::
          {:ok, [{Causeway.Event.t(), atom() | nil}], map()}
  def causal_chain(id, opts), do: Causeway.Cluster.Chain.causal_chain(id, opts)

  @doc "Every node's `Causeway.metrics/0`, and totals."
  def metrics(opts) do
    merged(opts, :metrics, fn q -> [Keyword.get(q, :instance, Causeway)] end, fn per_node,
                                                                                 offsets ->
      nodes = Map.new(per_node)

      totals =
        for key <- [
              :produced,
              :persisted,
              :dropped_total,
              :events_per_s,
              :native_memory,
              :storage_bytes
            ],
            into: %{} do
          {key, nodes |> Map.values() |> Enum.map(&(Map.get(&1, key) || 0)) |> Enum.sum()}
        end

      %{nodes: nodes, totals: totals, clock_offsets_ns: offsets}
    end)
  end

  @doc """
  The wall-clock offset of each node to this one, in nanoseconds (what to
  subtract from a node's wall times to put them on this node's axis): the
  best of `rounds` round trips over distribution.
  """
  @spec clock_offsets([node()], pos_integer()) :: %{node() => integer()}
  def clock_offsets(nodes, rounds \\ 5) do
    Map.new(nodes, fn n ->
      case cached_offset(n) do
        {:ok, off} -> {n, off}
        :stale -> measure(n, rounds) |> tap(fn {n, off} -> cache_offset(n, off) end)
      end
    end)
  end

  # offsets are measured again when older than this (a query between uses
  # the last measurement: clocks drift slowly)
  @offset_ttl_ms 10_000

  defp cached_offset(n) when n == node(), do: {:ok, 0}

  defp cached_offset(n) do
    now = System.monotonic_time(:millisecond)

    case :ets.lookup(__MODULE__.Offsets, n) do
      [{^n, off, at}] when now - at < @offset_ttl_ms -> {:ok, off}
      _ -> :stale
    end
  rescue
    ArgumentError -> :stale
  end

  defp cache_offset(n, off) do
    :ets.insert(__MODULE__.Offsets, {n, off, System.monotonic_time(:millisecond)})
  rescue
    ArgumentError -> :ok
  end

  @doc false
  # Forgets the measured offsets (they are measured again at the next query).
  def forget_offsets do
    :ets.delete_all_objects(__MODULE__.Offsets)
  rescue
    ArgumentError -> :ok
  end

  defp measure(n, rounds) do
    if n == node() do
      {n, 0}
    else
      samples =
        for _ <- 1..rounds do
          t0 = now()

          case safe_call(n, __MODULE__, :now, [], 2_000) do
            {:ok, remote} ->
              t1 = now()
              {t1 - t0, remote - div(t0 + t1, 2)}

            _ ->
              nil
          end
        end
        |> Enum.reject(&is_nil/1)

      case samples do
        [] -> {n, 0}
        s -> {n, s |> Enum.min_by(&elem(&1, 0)) |> elem(1)}
      end
    end
  end

  @doc false
  # This node's wall clock as the cluster sees it. The application env
  # `:causeway, :test_clock_offset_ns` shifts it, and the wall times of the
  # events this node answers with: test-only, to simulate a node whose
  # clock is off.
  def now,
    do:
      System.system_time(:nanosecond) +
        Application.get_env(:causeway, :test_clock_offset_ns, 0)

  # ------------------------------------------------------------ tracing

  defmodule Trace do
    @moduledoc """
    A trace session per node, from `Causeway.trace(target, nodes: ...)`:
    `sessions` maps each node to its `Causeway.Tracer` session (each with
    the same options and limits, counted per node), `missing` names the
    nodes where none started and why. `Causeway.stop_trace/1` stops them
    all; a node that goes down ends its own part.
    """
    defstruct sessions: %{}, missing: []

    @type t :: %__MODULE__{
            sessions: %{node() => Causeway.Tracer.t()},
            missing: [{node(), term()}]
          }
  end

  @doc false
  # Causeway.trace/2 with nodes: one session on each node, owned by the caller.
  def trace(target, opts) do
    {nodes, timeout, query} = split!(opts)
    {connected, not_connected} = Enum.split_with(nodes, &(&1 == node() or &1 in Node.list()))
    owner = self()

    results =
      :erpc.multicall(connected, Causeway.Tracer, :start, [target, query, owner], timeout)
      |> Enum.zip(connected)

    {sessions, missing} =
      Enum.reduce(results, {%{}, Enum.map(not_connected, &{&1, :not_connected})}, fn
        {{:ok, {:ok, s}}, n}, {ok, miss} -> {Map.put(ok, n, s), miss}
        {{:ok, {:error, e}}, n}, {ok, miss} -> {ok, [{n, e} | miss]}
        {{:error, {:exception, %ArgumentError{} = e, _}}, _n}, _ -> raise e
        {{:error, {:erpc, reason}}, n}, {ok, miss} -> {ok, [{n, reason} | miss]}
        {other, n}, {ok, miss} -> {ok, [{n, other} | miss]}
      end)

    if sessions == %{} and missing != [] do
      {:error,
       %Causeway.Error{
         kind: :trace,
         message: "no trace session started: #{inspect(missing, limit: 10)}"
       }}
    else
      {:ok, %Trace{sessions: sessions, missing: Enum.reverse(missing)}}
    end
  end

  @doc false
  def stop_trace(%Trace{sessions: sessions}) do
    for {_n, s} <- sessions, do: Causeway.Tracer.stop(s)
    :ok
  end

  @doc false
  def trace_info(%Trace{sessions: sessions, missing: missing}) do
    %{
      nodes: Map.new(sessions, fn {n, s} -> {n, Causeway.Tracer.info(s)} end),
      missing: missing
    }
  end

  # ------------------------------------------------------------ post-mortem

  @doc false
  # A query over several stores opened together (`Causeway.open([dir_a,
  # dir_b])`, e.g. stores copied from the nodes of a cluster): run on each,
  # merged as a cluster query's answers are (no clock offsets are known
  # after the fact: wall times are taken as they are).
  def over_stores(%Causeway.Stores{stores: stores}, opts, fun, args, merge) do
    query = Keyword.delete(opts, :store)

    answers =
      Enum.map(stores, fn s ->
        {s.dir, apply(Causeway, fun, args.(Keyword.put(query, :store, s)))}
      end)

    merge.(answers, %{})
  end

  @doc false
  def stores_events(stores, opts),
    do: over_stores(stores, opts, :events, fn q -> [q] end, &merge_events(&1, &2, opts))

  @doc false
  def stores_state_history(stores, pid, opts),
    do: over_stores(stores, opts, :state_history, fn q -> [pid, q] end, &merge_events(&1, &2, []))

  @doc false
  def stores_message_flow(stores, a, b, opts) do
    over_stores(stores, opts, :message_flow, fn q -> [a, b, q] end, fn per, offsets ->
      per
      |> Enum.flat_map(fn {_, flows} -> flows end)
      |> Enum.uniq_by(&{&1.send.node, &1.send.id})
      |> Enum.sort_by(&event_key(&1.send, offsets))
    end)
  end

  # ------------------------------------------------------------ the fan-out

  @doc false
  # Runs Causeway.fun(args) on each node (without :nodes/:timeout in the
  # query), returns {:ok, merge.(answers, offsets), %{missing:, offsets:}}.
  def merged(opts, fun, args, merge) do
    {nodes, timeout, query} = split!(opts)
    {answers, missing} = ask(nodes, fun, args.(query), timeout)
    offsets = clock_offsets(Enum.map(answers, &elem(&1, 0)))
    {:ok, merge.(answers, offsets), %{missing: missing, offsets: offsets}}
  end

  @doc false
  # Runs remote(fun, args) on each connected node in parallel, in bounded
  # time: {[{node, answer}], [{node, reason}]}, both in the order asked.
  def ask(nodes, fun, args, timeout) do
    {connected, not_connected} = Enum.split_with(nodes, &(&1 == node() or &1 in Node.list()))

    results =
      :erpc.multicall(connected, __MODULE__, :remote, [fun, args], timeout)
      |> Enum.zip(connected)

    {answers, missing} =
      Enum.reduce(results, {[], Enum.map(not_connected, &{&1, :not_connected})}, fn
        {{:ok, r}, n}, {ok, miss} ->
          {[{n, r} | ok], miss}

        {{:error, {:erpc, reason}}, n}, {ok, miss} ->
          {ok, [{n, reason} | miss]}

        {{:error, {:exception, :undef, [{__MODULE__, :remote, _, _} | _]}}, n}, {ok, miss} ->
          {ok, [{n, :no_cluster_support} | miss]}

        {{:error, {:exception, %FunctionClauseError{module: __MODULE__, function: :remote}, _}},
         n},
        {ok, miss} ->
          {ok, [{n, :no_cluster_support} | miss]}

        {{:error, {:exception, e, _}}, n}, {ok, miss} ->
          {ok, [{n, {:error, e}} | miss]}

        {{:throw, v}, n}, {ok, miss} ->
          {ok, [{n, {:throw, v}} | miss]}

        {{:exit, r}, n}, {ok, miss} ->
          {ok, [{n, {:exit, r}} | miss]}

        {other, n}, {ok, miss} ->
          {ok, [{n, {:malformed, other}} | miss]}
      end)

    {Enum.reverse(answers), Enum.reverse(missing)}
  end

  @doc false
  # One source of a cluster query: `{:node, n}` (asked over distribution,
  # as ask/4 does) or `{:store, store}` (a store opened here, post-mortem);
  # the last of `args` is the query's options. {:ok, answer} | {:missing,
  # {source, reason}}.
  def ask_one({:node, n}, fun, args, timeout) do
    case ask([n], fun, args, timeout) do
      {[{^n, r}], []} -> {:ok, r}
      {[], [miss]} -> {:missing, miss}
    end
  end

  def ask_one({:store, s}, fun, args, _timeout) do
    {:ok, local(fun, List.update_at(args, -1, &Keyword.put(&1, :store, s)))}
  rescue
    e in Causeway.Error -> {:missing, {s.dir, {:error, e}}}
  end

  @doc false
  # event/call_tree/causal_chain/state_at with nodes: the answer of the
  # first node (in the order asked) that has one; raises when none has it
  # and some did not answer.
  def first(fun, args, opts) do
    {:ok, per_node, meta} = merged(opts, fun, fn q -> args ++ [q] end, fn per, _ -> per end)
    found = Enum.find_value(per_node, fn {_n, r} -> if found?(r), do: r end)

    cond do
      found != nil -> found
      meta.missing != [] -> unwrap!({:ok, none(fun), meta})
      true -> none(fun)
    end
  end

  defp found?(nil), do: false
  defp found?(:none), do: false
  defp found?([]), do: false
  defp found?(_), do: true

  defp none(:event), do: nil
  defp none(:call_tree), do: nil
  defp none(:causal_chain), do: []
  defp none(:state_at), do: :none

  @doc false
  # What each node runs for a cluster query: the query itself, on this
  # node's instance. (An older Causeway on a peer has no such function: that
  # node is reported missing with :no_cluster_support.)
  def remote(fun, args)
      when fun in [
             :events,
             :state_history,
             :message_flow,
             :metrics,
             :event,
             :call_tree,
             :causal_chain,
             :state_at,
             :events_page,
             :receive_rank,
             :nth_send,
             :find_spawn,
             :sends_to,
             :names_of
           ] do
    result = local(fun, args)

    case Application.get_env(:causeway, :test_clock_offset_ns, 0) do
      0 -> result
      off -> shift(result, off)
    end
  end

  # what remote/2 runs, on this node's instance or on a store opened here
  defp local(:events_page, [q]) do
    {events, next, _index} = Causeway.Query.events_page(q)
    {events, next}
  end

  defp local(fun, args)
       when fun in [:receive_rank, :nth_send, :find_spawn, :sends_to, :names_of],
       do: apply(Causeway.Cluster.Links, fun, args)

  defp local(fun, args), do: apply(Causeway, fun, args)

  # test-only (see now/0): this node's wall times as a shifted clock gives them
  defp shift(%Causeway.Event{wall_time: %DateTime{} = t} = e, off),
    do: %{e | wall_time: DateTime.add(t, off, :nanosecond)}

  defp shift(%{send: s, receive: r} = flow, off),
    do: %{flow | send: shift(s, off), receive: r && shift(r, off)}

  defp shift(list, off) when is_list(list), do: Enum.map(list, &shift(&1, off))
  defp shift({events, next}, off) when is_list(events), do: {shift(events, off), next}
  defp shift(other, _off), do: other

  @doc false
  # The plain API: the merged result, with a warning for missing nodes.
  def unwrap!({:ok, result, %{missing: []}}), do: result

  def unwrap!({:ok, result, %{missing: missing}}) do
    Logger.warning(
      "Causeway: no answer from #{Enum.map_join(missing, ", ", fn {n, r} -> "#{n} (#{inspect(r, limit: 5)})" end)}"
    )

    result
  end

  @doc false
  # {nodes, timeout, the query without them}; raises on bad :nodes/:timeout.
  def split!(opts) do
    unless is_list(opts) and Keyword.keyword?(opts),
      do:
        raise(
          ArgumentError,
          "expected a keyword list of options, got: #{inspect(opts, limit: 5)}"
        )

    {nodes, opts} = Keyword.pop(opts, :nodes, [node()])
    {timeout, query} = Keyword.pop(opts, :timeout, @default_timeout)

    nodes =
      case nodes do
        :all ->
          [node() | Node.list()]

        l when is_list(l) and l != [] ->
          if Causeway.Options.list_of?(l, &is_atom/1),
            do: Enum.uniq(l),
            else:
              raise(
                ArgumentError,
                ":nodes must be :all or a list of nodes, got: #{inspect(l, limit: 5)}"
              )

        other ->
          raise ArgumentError,
                ":nodes must be :all or a list of nodes, got: #{inspect(other, limit: 5)}"
      end

    Causeway.Options.int!(timeout, :timeout, 0..0xFFFF_FFFF)
    {nodes, timeout, query}
  end

  defp safe_call(n, m, f, a, timeout) do
    {:ok, :erpc.call(n, m, f, a, timeout)}
  catch
    _, r -> {:error, r}
  end

  defp merge_events(per_node, offsets, opts) do
    desc = Keyword.get(opts, :order, :asc) == :desc

    all = Enum.flat_map(per_node, fn {_node, events} -> events end)
    keys = Map.new(all, &{{&1.node, &1.id}, event_key(&1, offsets)})
    keys = if length(per_node) > 1, do: after_sends(keys, all), else: keys

    merged = Enum.sort_by(all, &keys[{&1.node, &1.id}], if(desc, do: :desc, else: :asc))

    case Keyword.get(opts, :limit, 1000) do
      n when is_integer(n) and n > 0 -> Enum.take(merged, n)
      _ -> merged
    end
  end

  # A receive is never placed before its send (the offsets can be off by
  # half a round trip): one paired across nodes (Cluster.Links) whose
  # corrected time comes earlier is placed right after the send.
  defp after_sends(keys, events) do
    Enum.reduce(Causeway.Cluster.Links.pair_across(events), keys, fn {s, r}, keys ->
      {sent, _, _} = keys[{s.node, s.id}]

      case keys[{r.node, r.id}] do
        {got, n, id} when got <= sent -> Map.put(keys, {r.node, r.id}, {sent + 1, n, id})
        _ -> keys
      end
    end)
  end

  @doc false
  # An event's place on the merged time axis.
  def event_key(e, offsets) do
    ns = DateTime.to_unix(e.wall_time, :nanosecond) - Map.get(offsets, e.node, 0)
    {ns, e.node, e.id}
  end
end
