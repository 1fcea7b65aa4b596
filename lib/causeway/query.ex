defmodule Causeway.Query do
  @moduledoc """
  The query side of `Causeway`: option parsing, paging and the text renderings
  used by `Causeway.print_timeline/2`. Use the functions of `Causeway`.
  """

  alias Causeway.{Event, Native, Options}

  @u64_max 0xFFFF_FFFF_FFFF_FFFF
  @target_opts [:store, :instance]

  @event_opts [
    :pid,
    :type,
    :module,
    :function,
    :arity,
    :call_id,
    :since,
    :until,
    :limit,
    :order,
    :after,
    :links,
    :store,
    :instance,
    :page_size,
    :scan,
    :incident
  ]

  @doc false
  def handle(opts) do
    case Keyword.get(opts, :store) do
      %Causeway.Store{handle: h} when is_reference(h) ->
        h

      nil ->
        case Keyword.get(opts, :instance, Causeway) do
          name when is_atom(name) ->
            Causeway.Instance.handle!(name)

          other ->
            raise ArgumentError,
                  ":instance must be an instance name (an atom), got: #{inspect(other)}"
        end

      other ->
        raise ArgumentError, ":store must come from Causeway.open/2, got: #{inspect(other)}"
    end
  end

  @doc false
  def events_page(opts) do
    opts = Options.keyword!(opts, @event_opts, "Causeway.events/1")
    h = handle(opts)
    filter = filter!(opts)

    case Native.query_events(h, filter) do
      {:ok, {events, next, index}} -> {Event.from_native_all(events), next, index}
      {:error, e} -> raise Causeway.Error.from_native(e)
    end
  end

  @doc false
  # How many events match, decoded in Rust only (for benchmarks): {count, index}.
  def count(opts) do
    opts = Options.keyword!(opts, @event_opts, "Causeway.Query.count/1")

    case Native.query_count(handle(opts), filter!(opts)) do
      {:ok, r} -> r
      {:error, e} -> raise Causeway.Error.from_native(e)
    end
  end

  @doc false
  def stream(opts) do
    {page, total, base} = stream_opts!(opts)

    Stream.resource(
      fn -> {Keyword.get(opts, :after), total} end,
      fn
        :done ->
          {:halt, :done}

        {_cursor, 0} ->
          {:halt, :done}

        {cursor, left} ->
          n = if left == :infinity, do: page, else: min(page, left)
          {events, next, _} = events_page(Keyword.merge(base, after: cursor, limit: n))
          left = if left == :infinity, do: :infinity, else: left - length(events)

          cond do
            events == [] -> {:halt, :done}
            next == nil -> {events, :done}
            true -> {events, {next, left}}
          end
      end,
      fn _ -> :ok end
    )
  end

  @doc false
  # The options of a stream, checked now (not when it is first read):
  # {page_size, total limit or :infinity, the filters (with :after)}.
  def stream_opts!(opts) do
    opts = Options.keyword!(opts, @event_opts, "Causeway.stream_events/1")
    page = Options.int!(Keyword.get(opts, :page_size, 500), :page_size, 1..1_000_000)

    total =
      case count!(opts, :limit, :infinity) do
        0 -> :infinity
        n -> n
      end

    _ = filter!(Keyword.drop(opts, [:limit, :page_size]))
    {page, total, Keyword.drop(opts, [:page_size, :limit])}
  end

  defp filter!(opts) do
    types =
      case Keyword.get(opts, :type) do
        nil ->
          []

        t when is_atom(t) ->
          [type!(t)]

        ts when is_list(ts) ->
          Enum.map(ts, &type!/1)

        other ->
          raise ArgumentError,
                ":type must be an event type or a list of them, got: #{inspect(other)}"
      end

    pid = Keyword.get(opts, :pid)

    if pid != nil and not is_pid(pid),
      do: raise(ArgumentError, ":pid must be a pid, got: #{inspect(pid)}")

    limit = count!(opts, :limit, 1000)
    {since, until} = incident_span(opts, opt_time(opts, :since), opt_time(opts, :until))

    reverse =
      case Keyword.get(opts, :order, :asc) do
        :asc -> false
        :desc -> true
        other -> raise ArgumentError, ":order must be :asc or :desc, got: #{inspect(other)}"
      end

    %{
      pid: pid,
      types: Enum.map(types, &Atom.to_string/1),
      module: name!(opts, :module),
      function: name!(opts, :function),
      arity: opt_int!(opts, :arity, 255),
      call_id: opt_int!(opts, :call_id),
      since: since,
      until: until,
      limit: limit,
      reverse: reverse,
      after: opt_int!(opts, :after),
      links: bool!(opts, :links, true),
      scan: bool!(opts, :scan, false)
    }
  end

  # `incident: id` narrows the time range to what the incident wrote.
  defp incident_span(opts, since, until) do
    case Keyword.get(opts, :incident) do
      nil ->
        {since, until}

      id ->
        {lo, hi} = Causeway.Incident.wall_span(Causeway.Flight.incident!(id, opts))
        {max(since || lo, lo), min(until || hi, hi)}
    end
  end

  defp type!(t) do
    if t in Event.types(),
      do: t,
      else:
        raise(
          ArgumentError,
          "unknown event type #{inspect(t)}; expected one of #{inspect(Event.types())}"
        )
  end

  defp name!(opts, key) do
    case Keyword.get(opts, key) do
      nil -> nil
      a when is_atom(a) -> Atom.to_string(a)
      other -> raise ArgumentError, "#{inspect(key)} must be an atom, got: #{inspect(other)}"
    end
  end

  # A count option: a positive integer, or :infinity (0 to the NIF: no limit).
  @doc false
  def count!(opts, key, default) do
    case Keyword.get(opts, key, default) do
      :infinity ->
        0

      n when is_integer(n) and n > 0 and n < 0x1_0000_0000_0000_0000 ->
        n

      other ->
        raise ArgumentError,
              "#{inspect(key)} must be a positive integer or :infinity, got: #{inspect(other, limit: 5)}"
    end
  end

  defp opt_int!(opts, key, max \\ @u64_max) do
    case Keyword.get(opts, key) do
      nil -> nil
      n -> Options.int!(n, key, 0..max)
    end
  end

  defp bool!(opts, key, default) do
    case Keyword.get(opts, key, default) do
      b when is_boolean(b) ->
        b

      other ->
        raise ArgumentError, "#{inspect(key)} must be true or false, got: #{inspect(other)}"
    end
  end

  @doc false
  # An event or call id argument.
  def id!(id, fun) do
    if is_integer(id) and id >= 0 and id <= @u64_max,
      do: id,
      else:
        raise(
          ArgumentError,
          "#{fun} expects an event id (an integer in 0..2^64-1), got: #{inspect(id)}"
        )
  end

  defp opt_time(opts, key) do
    case Keyword.get(opts, key) do
      nil -> nil
      t when key == :until -> clamp_ns(wall_ns!(t, key, :last))
      t -> clamp_ns(wall_ns!(t, key, :first))
    end
  end

  # wall-clock ns as the store keeps them: 1970 .. 2262 (signed 64-bit)
  @max_ns 0x7FFF_FFFF_FFFF_FFFF
  defp clamp_ns(ns), do: ns |> max(0) |> min(@max_ns)

  @doc false
  # A time as wall-clock ns. A DateTime stands for its whole precision unit
  # (12:03:04 is a whole second, an event's wall_time a whole microsecond):
  # `:first` gives its first nanosecond, `:last` its last.
  def wall_ns!(t, key, edge \\ :first)

  def wall_ns!(%DateTime{microsecond: {_, precision}} = t, _, edge) do
    ns = DateTime.to_unix(t, :nanosecond)
    if edge == :last, do: ns + Integer.pow(10, 9 - precision) - 1, else: ns
  end

  def wall_ns!(%NaiveDateTime{} = t, key, edge),
    do: t |> DateTime.from_naive!("Etc/UTC") |> wall_ns!(key, edge)

  def wall_ns!(%Time{} = t, key, edge),
    do: wall_ns!(NaiveDateTime.new!(Date.utc_today(), t), key, edge)

  def wall_ns!(t, _, _) when is_integer(t), do: t + System.time_offset(:nanosecond)

  def wall_ns!(other, key, _),
    do:
      raise(
        ArgumentError,
        "#{inspect(key)} must be a DateTime, NaiveDateTime, Time or monotonic integer, got: #{inspect(other)}"
      )

  # state changes as diffs, not as two whole states
  defp timeline_summary(%Event{type: :state_change, data: %{old: old, new: new}})
       when old != nil do
    diff = Causeway.StateDiff.diff(old, new)

    "state " <>
      case diff.changes do
        [] ->
          "(unchanged)"

        changes when length(changes) > 6 ->
          "#{length(changes)} changes: " <>
            (diff |> to_string() |> String.split("\n") |> Enum.take(6) |> Enum.join("; ")) <>
            "; …"

        _ ->
          diff |> to_string() |> String.replace("\n", "; ")
      end
  end

  defp timeline_summary(%Event{file: file} = e) when is_binary(file),
    do: Event.summary(e) <> "  " <> Event.location(e)

  defp timeline_summary(e), do: Event.summary(e)

  defp unwrap({:ok, v}), do: v
  defp unwrap({:error, {:not_found, _}}), do: nil
  defp unwrap({:error, e}), do: raise(Causeway.Error.from_native(e))

  @doc false
  def event(id, opts) do
    id = id!(id, "Causeway.event/2")
    opts = Options.keyword!(opts, @target_opts, "Causeway.event/2")

    case unwrap(Native.query_event(handle(opts), id)) do
      nil -> nil
      e -> Event.from_native(e)
    end
  end

  @doc false
  def call_tree(root, opts) do
    unless is_pid(root), do: id!(root, "Causeway.call_tree/2")
    opts = Options.keyword!(opts, [:max_nodes | @target_opts], "Causeway.call_tree/2")

    max =
      case count!(opts, :max_nodes, 10_000) do
        0 -> 0xFFFF_FFFF_FFFF_FFFF
        n -> n
      end

    case Native.query_call_tree(handle(opts), root, max) do
      {:ok, trees} when is_list(trees) -> Enum.map(trees, &Causeway.CallTree.from_native/1)
      {:ok, tree} -> Causeway.CallTree.from_native(tree)
      {:error, {:not_found, _}} -> nil
      {:error, e} -> raise Causeway.Error.from_native(e)
    end
  end

  @doc false
  def causal_chain(id, opts) do
    id = id!(id, "Causeway.causal_chain/2")
    opts = Options.keyword!(opts, [:max | @target_opts], "Causeway.causal_chain/2")

    max =
      case count!(opts, :max, 1000) do
        0 -> 0xFFFF_FFFF_FFFF_FFFF
        n -> n
      end

    case unwrap(Native.query_causal_chain(handle(opts), id, max)) do
      nil -> []
      chain -> Enum.map(chain, fn {e, via} -> {Event.from_native(e), via} end)
    end
  end

  @doc false
  def message_flow(a, b, opts) when is_pid(a) and is_pid(b) do
    opts = Options.keyword!(opts, [:limit | @target_opts], "Causeway.message_flow/3")
    limit = count!(opts, :limit, :infinity)

    handle(opts)
    |> Native.query_message_flow(a, b, limit)
    |> unwrap()
    |> Enum.map(fn {s, r} ->
      %{send: Event.from_native(s), receive: if(r, do: Event.from_native(r))}
    end)
  end

  def message_flow(a, b, _),
    do: raise(ArgumentError, "message_flow/2 expects two pids, got: #{inspect(a)}, #{inspect(b)}")

  @doc false
  def state_history(pid, opts) when is_pid(pid) do
    opts =
      Options.keyword!(
        opts,
        [:since, :until, :limit, :incident | @target_opts],
        "Causeway.state_history/2"
      )

    {since, until} = incident_span(opts, opt_time(opts, :since), opt_time(opts, :until))
    limit = count!(opts, :limit, :infinity)

    handle(opts)
    |> Native.query_state_history(pid, since, until, limit)
    |> unwrap()
    |> Enum.map(&Event.from_native/1)
  end

  def state_history(pid, _),
    do: raise(ArgumentError, "state_history/1 expects a pid, got: #{inspect(pid)}")

  @doc false
  def state_at(pid, time, opts) when is_pid(pid) do
    opts = Options.keyword!(opts, @target_opts, "Causeway.state_at/3")
    wall = clamp_ns(wall_ns!(time, :time, :last))

    case unwrap(Native.query_state_at(handle(opts), pid, wall)) do
      nil ->
        :none

      e ->
        e = Event.from_native(e)
        {:ok, e.data.new, e}
    end
  end

  def state_at(pid, _time, _),
    do: raise(ArgumentError, "state_at/2 expects a pid, got: #{inspect(pid)}")

  @doc false
  def timeline(pid, opts) do
    unless is_pid(pid),
      do: raise(ArgumentError, "Causeway.print_timeline/2 expects a pid, got: #{inspect(pid)}")

    opts = Options.keyword!(opts, @event_opts -- [:pid], "Causeway.print_timeline/2")
    events = Causeway.events(Keyword.merge([pid: pid, limit: 1000], opts))

    case events do
      [] ->
        "no events recorded for #{inspect(pid)}"

      [first | _] ->
        {lines, _} =
          Enum.map_reduce(events, 0, fn e, depth ->
            depth = if e.type == :function_exit, do: max(depth - 1, 0), else: depth
            dt = (e.timestamp - first.timestamp) / 1_000_000

            line =
              "+#{:erlang.float_to_binary(dt, decimals: 3)} ms  #{String.duplicate("  ", depth)}#{timeline_summary(e)}"

            {line, if(e.type == :function_entry, do: depth + 1, else: depth)}
          end)

        Enum.join(["timeline of #{inspect(pid)} (#{length(events)} events)" | lines], "\n")
    end
  end
end
