defmodule Causeway.Export do
  @moduledoc """
  Exports people can look at.

    * `chrome_trace/2` — Chrome Trace Event JSON, for Perfetto
      (<https://ui.perfetto.dev>) or `chrome://tracing`: one track per process,
      calls as nested slices, messages as flow arrows from the send to its
      receive, state changes, spawns, exits and errors as instants.
    * `mermaid/2` — a Mermaid sequence diagram of the messages between a set of
      processes.

      {:ok, %{events: n}} = Causeway.Export.chrome_trace("trace.json", pid: pid)
      {:ok, _} = Causeway.Export.mermaid("flow.mmd", pids: [a, b, c])

  Across a cluster: `chrome_trace(path, nodes: :all)` makes each node a
  process of the trace (its BEAM processes the threads), on one corrected
  time axis, with flow arrows from a send on one node to its receive on
  another; `mermaid/2` with pids on several nodes labels each participant
  with its node.
  """

  alias Causeway.{Event, JSON}

  @doc """
  Writes the events selected by `opts` (the filters of `Causeway.events/1`;
  `:limit` defaults to 100 000) as Chrome Trace Event JSON to `path`.
  Returns `{:ok, %{path: path, events: count, trace_events: count}}`.

  With `nodes: :all | [node()]` (and `:timeout`), or `store:` a
  `Causeway.Stores`, the events of every node are exported together:
  each node is a process of the trace (Perfetto shows the node's name as
  the process, its BEAM processes as threads), on one time axis (wall
  time corrected by each node's clock offset, as `Causeway.Cluster`
  merges), and a message sent to another node's process is drawn as a
  flow arrow from the send to its receive there (paired as
  `Causeway.Cluster.Links` says). A receive is never drawn before its
  send: one whose corrected time comes earlier (the offsets can be off by
  half a round trip) is drawn at the send's time. The result adds
  `nodes: count` and `missing: [{node, reason}]`.
  """
  @spec chrome_trace(Path.t(), keyword()) :: {:ok, map()} | {:error, term()}
  def chrome_trace(path, opts \\ []) do
    path = Causeway.Options.path!(path, "chrome_trace/2")

    unless is_list(opts) and Keyword.keyword?(opts),
      do:
        raise(
          ArgumentError,
          "chrome_trace/2 expects a keyword list of options, got: #{inspect(opts, limit: 5)}"
        )

    opts = Keyword.merge([limit: 100_000], opts)

    if Keyword.has_key?(opts, :nodes) or match?(%Causeway.Stores{}, opts[:store]),
      do: chrome_trace_merged(path, opts),
      else: Causeway.Export.ChromeStream.write(path, opts)
  end

  # several nodes or stores: merged in memory (one time axis, flows across)
  defp chrome_trace_merged(path, opts) do
    {events, axis, missing} =
      cond do
        Keyword.has_key?(opts, :nodes) ->
          {:ok, events, meta} = Causeway.Cluster.events(opts)
          {events, meta.offsets, meta.missing}

        match?(%Causeway.Stores{}, opts[:store]) ->
          {Causeway.events(opts), %{}, []}
      end

    trace = if events == [], do: [], else: chrome_events_of(events, axis)
    json = JSON.encode_to_iodata(%{"traceEvents" => trace, "displayTimeUnit" => "ns"})

    case File.write(path, json) do
      :ok ->
        {:ok,
         %{
           path: path,
           events: length(events),
           trace_events: length(trace),
           nodes: events |> Enum.map(& &1.node) |> Enum.uniq() |> length(),
           missing: missing
         }}

      {:error, reason} ->
        {:error, %Causeway.Error{kind: :io, message: "#{path}: #{:file.format_error(reason)}"}}
    end
  end

  @doc """
  The Chrome trace events (maps) for a list of `Causeway.Event`s. With
  `offsets: %{node => ns}` (as `Causeway.Cluster.clock_offsets/1` gives,
  `%{}` for none), the events may come from several nodes and are laid
  out as `chrome_trace/2` with `nodes:` does; without it, on this node's
  monotonic clock, as one process.
  """
  @spec chrome_events([Event.t()], keyword()) :: [map()]
  def chrome_events(events, opts \\ [])

  def chrome_events(events, opts) when is_list(events) do
    unless Causeway.Options.list_of?(events, &Event.whole?/1),
      do:
        raise(
          ArgumentError,
          "chrome_events/1 expects a list of %Causeway.Event{}, got: #{inspect(events, limit: 3)}"
        )

    opts = Causeway.Options.keyword!(opts, [:offsets], "Causeway.Export.chrome_events/2")

    axis =
      case Keyword.get(opts, :offsets) do
        nil ->
          :monotonic

        %{} = off ->
          off

        other ->
          raise ArgumentError,
                ":offsets must be a map of node => ns, got: #{inspect(other, limit: 5)}"
      end

    if events == [], do: [], else: chrome_events_of(events, axis)
  end

  def chrome_events(other, _opts),
    do:
      raise(
        ArgumentError,
        "chrome_events/1 expects a list of %Causeway.Event{}, got: #{inspect(other, limit: 3)}"
      )

  # axis: :monotonic (one node: its monotonic clock, one process) or the
  # nodes' clock offsets (one process per node, corrected wall time)
  defp chrome_events_of(events, axis) do
    ns = fn e ->
      case axis do
        :monotonic -> e.timestamp
        off -> DateTime.to_unix(e.wall_time, :nanosecond) - Map.get(off, e.node, 0)
      end
    end

    t0 = events |> Enum.map(ns) |> Enum.min()

    {procs, process} =
      case axis do
        :monotonic ->
          {%{}, [process_name(1, node())]}

        _ ->
          procs = events |> Enum.map(& &1.node) |> Enum.uniq() |> Enum.with_index(1) |> Map.new()
          {procs, Enum.map(procs, fn {n, i} -> process_name(i, n) end)}
      end

    proc = fn e -> Map.get(procs, e.node, 1) end

    tids =
      events
      |> Enum.map(&{proc.(&1), &1.pid})
      |> Enum.uniq()
      |> Enum.with_index(1)
      |> Map.new()

    names =
      for {{p, pid}, tid} <- tids,
          do: %{
            "name" => "thread_name",
            "ph" => "M",
            "pid" => p,
            "tid" => tid,
            "args" => %{"name" => inspect(pid)}
          }

    flows = flows(events, axis, ns)

    body =
      Enum.flat_map(events, fn e ->
        p = proc.(e)

        ts =
          case flows[key(e)] do
            {:end, _, send_ns} when is_integer(send_ns) -> max(ns.(e), send_ns)
            _ -> ns.(e)
          end

        base = %{"pid" => p, "tid" => tids[{p, e.pid}], "ts" => us(ts - t0)}
        trace_event(e, base, flows[key(e)])
      end)

    process ++ names ++ body
  end

  @doc false
  def process_name(pid, node),
    do: %{
      "name" => "process_name",
      "ph" => "M",
      "pid" => pid,
      "tid" => 0,
      "args" => %{"name" => to_string(node)}
    }

  defp key(e), do: {e.node, e.id}

  # event key => {:start, flow_id} | {:end, flow_id, send_ns | nil}: the
  # flows of links within a node (the send's id, on one node), and of the
  # sends to another node's process paired with their receives
  defp flows(events, axis, ns) do
    keys = MapSet.new(events, &key/1)

    local =
      for e <- events,
          {kind, other} <- e.links || [],
          kind in [:received_by, :receives],
          MapSet.member?(keys, {e.node, other}) do
        case kind do
          :received_by -> {{e.node, e.id}, {:start, {e.node, e.id}}}
          :receives -> {{e.node, e.id}, {:end, {e.node, other}, nil}}
        end
      end

    across =
      if axis == :monotonic,
        do: [],
        else:
          Enum.flat_map(Causeway.Cluster.Links.pair_across(events), fn {s, r} ->
            [{key(s), {:start, key(s)}}, {key(r), {:end, key(s), ns.(s)}}]
          end)

    all = Map.new(local ++ across)

    case axis do
      # one node: the flow id is the send's id, as it always was
      :monotonic ->
        Map.new(all, fn
          {k, {:start, {_, id}}} -> {k, {:start, id}}
          {k, {:end, {_, id}, at}} -> {k, {:end, id, at}}
        end)

      # several: ids are per node, so flows are numbered
      _ ->
        ids =
          all
          |> Enum.map(fn
            {_, {:start, s}} -> s
            {_, {:end, s, _}} -> s
          end)
          |> Enum.uniq()
          |> Enum.sort()
          |> Enum.with_index(1)
          |> Map.new()

        Map.new(all, fn
          {k, {:start, s}} -> {k, {:start, ids[s]}}
          {k, {:end, s, at}} -> {k, {:end, ids[s], at}}
        end)
    end
  end

  defp us(ns), do: ns / 1000

  @doc false
  # The trace events of one event, at `base` (pid, tid, ts), with its flow.
  def trace_event(e, base, flow)

  def trace_event(%Event{type: :function_entry} = e, base, _) do
    [
      Map.merge(base, %{
        "ph" => "B",
        "name" => Event.mfa_string(e),
        "cat" => "call",
        "args" =>
          %{"args" => short(e.data), "call_id" => e.call_id}
          |> then(&if(e.file, do: Map.merge(&1, %{"file" => e.file, "line" => e.line}), else: &1))
      })
    ]
  end

  def trace_event(%Event{type: :function_exit} = e, base, _) do
    [
      Map.merge(base, %{
        "ph" => "E",
        "name" => Event.mfa_string(e),
        "cat" => "call",
        "args" => %{"result" => short(e.data)}
      })
    ]
  end

  def trace_event(%Event{type: :message_send} = e, base, flow) do
    slice =
      Map.merge(base, %{
        "ph" => "X",
        "dur" => 1,
        "name" => "send",
        "cat" => "message",
        "args" => %{"message" => short(e.data.message), "to" => inspect(e.data.to)}
      })

    flow =
      case flow do
        {:start, id} ->
          [Map.merge(base, %{"ph" => "s", "id" => id, "name" => "message", "cat" => "message"})]

        _ ->
          []
      end

    [slice | flow]
  end

  def trace_event(%Event{type: :message_receive} = e, base, flow) do
    slice =
      Map.merge(base, %{
        "ph" => "X",
        "dur" => 1,
        "name" => "receive",
        "cat" => "message",
        "args" => %{"message" => short(e.data.message), "from" => inspect(e.data.from)}
      })

    flow =
      case flow do
        {:end, id, _} ->
          [
            Map.merge(base, %{
              "ph" => "f",
              "bp" => "e",
              "id" => id,
              "name" => "message",
              "cat" => "message"
            })
          ]

        _ ->
          []
      end

    [slice | flow]
  end

  def trace_event(%Event{} = e, base, _) do
    [
      Map.merge(base, %{
        "ph" => "i",
        "s" => "t",
        "name" => Atom.to_string(e.type),
        "cat" => Atom.to_string(e.type),
        "args" => %{"data" => short(e.data)}
      })
    ]
  end

  defp short(term), do: inspect(term, limit: 20, printable_limit: 200)

  @doc """
  Writes a Mermaid sequence diagram of the messages between `opts[:pids]` (each
  send with its receive when matched; a send never received is drawn as an
  async arrow marked "not received") to `path`. Other options: `:limit`
  (messages, default 500), `:store`, `:instance`, `:nodes`, `:timeout`.

  With pids on several nodes, each participant is labelled with its node
  (`#PID<0.210.0> on b@host`), the messages are looked up on the pids'
  nodes (unless `nodes:` or `store:` says where), a send is paired with
  its receive on the other node as `Causeway.message_flow/3` with
  `nodes:` does, and the arrows follow corrected wall time.
  """
  @spec mermaid(Path.t(), keyword()) :: {:ok, map()} | {:error, term()}
  def mermaid(path, opts) do
    path = Causeway.Options.path!(path, "mermaid/2")
    text = mermaid_text(opts)

    case File.write(path, text) do
      :ok ->
        {:ok, %{path: path, lines: length(String.split(text, "\n", trim: true))}}

      {:error, reason} ->
        {:error, %Causeway.Error{kind: :io, message: "#{path}: #{:file.format_error(reason)}"}}
    end
  end

  @doc "The Mermaid text of `mermaid/2`."
  @spec mermaid_text(keyword()) :: String.t()
  def mermaid_text(opts) do
    opts =
      Causeway.Options.keyword!(
        opts,
        [:pids, :limit, :store, :instance, :nodes, :timeout],
        "Causeway.Export.mermaid/2"
      )

    pids = Keyword.get(opts, :pids)

    unless pids != [] and Causeway.Options.list_of?(pids, &is_pid/1),
      do:
        raise(
          ArgumentError,
          ":pids must be a non-empty list of pids, got: #{inspect(pids, limit: 5)}"
        )

    pids = Enum.uniq(pids)
    several = pids |> Enum.map(&node/1) |> Enum.uniq() |> length() > 1

    limit = Causeway.Query.count!(opts, :limit, 500)
    # each pair reads at most `limit` messages; the first `limit` of all are among them
    where =
      cond do
        Keyword.has_key?(opts, :nodes) or Keyword.has_key?(opts, :store) ->
          Keyword.take(opts, [:store, :instance, :nodes, :timeout])

        several ->
          [nodes: pids |> Enum.map(&node/1) |> Enum.uniq()] ++
            Keyword.take(opts, [:instance, :timeout])

        true ->
          Keyword.take(opts, [:instance, :timeout])
      end

    query = where ++ [limit: if(limit == 0, do: :infinity, else: limit)]

    alias_of = pids |> Enum.with_index(1) |> Map.new(fn {p, i} -> {p, "P#{i}"} end)

    order =
      case Keyword.get(where, :nodes) do
        nil ->
          if match?(%Causeway.Stores{}, where[:store]),
            do: &Causeway.Cluster.event_key(&1.send, %{}),
            else: & &1.send.id

        nodes ->
          nodes = if nodes == :all, do: [node() | Node.list()], else: nodes
          offsets = Causeway.Cluster.clock_offsets(Enum.filter(nodes, &connected?/1))
          &Causeway.Cluster.event_key(&1.send, offsets)
      end

    flows =
      for a <- pids, b <- pids, a < b do
        Causeway.message_flow(a, b, query)
      end
      |> List.flatten()
      |> Enum.sort_by(order)
      |> then(fn all -> if limit == 0, do: all, else: Enum.take(all, limit) end)

    participants =
      for p <- pids do
        label = if several, do: "#{inspect(p)} on #{node(p)}", else: inspect(p)
        "    participant #{alias_of[p]} as #{label}"
      end

    arrows =
      for %{send: s, receive: r} <- flows do
        from = alias_of[s.pid]
        to = alias_of[s.data.to]
        label = s.data.message |> inspect(limit: 6, printable_limit: 40) |> mermaid_escape()

        if r,
          do: "    #{from}->>#{to}: #{label}",
          else: "    #{from}-)#{to}: #{label} (not received)"
      end

    Enum.join(["sequenceDiagram" | participants ++ arrows], "\n") <> "\n"
  end

  defp connected?(n), do: n == node() or n in Node.list()

  # Mermaid's message text ends at a newline; `;` and `#` start entities.
  defp mermaid_escape(s),
    do:
      String.replace(s, ["\n", "\r", "#", ";"], fn
        "#" -> "#35;"
        ";" -> "#59;"
        _ -> " "
      end)
end
