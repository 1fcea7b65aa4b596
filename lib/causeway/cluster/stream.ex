defmodule Causeway.Cluster.Stream do
  @moduledoc """
  `Causeway.stream_events/1` over a cluster (`nodes:`) or over stores
  opened together (`store:` a `Causeway.Stores`): a k-way merge of each
  source's pages by corrected wall time (as `Causeway.Cluster` orders
  merged events), which never holds more than one page per source.

      {:ok, stream, %{missing: []}} =
        Causeway.Cluster.stream_events(nodes: :all, type: :message_send, page_size: 200)

      stream |> Stream.filter(&(&1.data.to == pid)) |> Enum.take(10)

  Each source is asked for its first page when the stream is made (so a
  node that does not answer is named in `missing` at once), and for its
  next page only when the events it gave have all been merged out. Every
  page asks for at most `:page_size` events and never more than `:limit`
  has left.

  ## A node lost in the middle of a stream

  A node that stops answering while the stream runs (down, disconnected,
  slower than `:timeout`) ends its part and the stream goes on with the
  others. A warning names it, and the process that made the stream gets
  `{:causeway, :stream_missing, ref, [{node, reason}]}`, where `ref` is the
  `:ref` of the answer's map. `Causeway.Cluster.missing/1` gives every
  node missing so far, at the start and since, by taking those messages
  out of the mailbox:

      {:ok, stream, info} = Causeway.Cluster.stream_events(nodes: :all)
      events = Enum.to_list(stream)
      Causeway.Cluster.missing(info)   #=> [{:"b@host", :noconnection}]
  """

  require Logger

  alias Causeway.Cluster

  defmodule Source do
    @moduledoc false
    # One node or store of a merged stream: its unmerged events, where its
    # next page starts, and whether it has more.
    defstruct [:id, buf: [], cursor: nil, done: false]
  end

  @doc false
  # {:ok, stream, %{missing:, offsets:}} for `opts` with :nodes, or with
  # store: %Causeway.Stores{}.
  def stream(opts) do
    {sources, timeout, query, missing} = sources!(opts)
    {page, total, base} = Causeway.Query.stream_opts!(query)
    desc = Keyword.get(base, :order, :asc) == :desc
    base = Keyword.delete(base, :store)
    start = Keyword.get(base, :after)

    sources = Enum.map(sources, &%Source{id: &1, cursor: start})
    ref = make_ref()

    ctx = %{
      base: base,
      page: page,
      timeout: timeout,
      desc: desc,
      offsets: %{},
      report: {self(), ref}
    }

    {sources, missed} = fill(sources, total, ctx)
    nodes = for %Source{id: {:node, n}} <- sources, do: n
    ctx = %{ctx | offsets: Cluster.clock_offsets(nodes)}

    stream =
      Stream.resource(
        fn -> {sources, total} end,
        fn
          {_sources, 0} -> {:halt, :done}
          {sources, left} -> step(sources, left, ctx)
        end,
        fn _ -> :ok end
      )

    {:ok, stream, %{missing: missing ++ missed, offsets: ctx.offsets, ref: ref}}
  end

  @doc false
  # Causeway.Cluster.missing/1 of a stream's answer
  def missing(%{missing: missing, ref: ref}) when is_list(missing) and is_reference(ref),
    do: missing ++ lost(ref, [])

  def missing(other),
    do:
      raise(
        ArgumentError,
        "Causeway.Cluster.missing/1 expects the map of a stream_events/1 answer, got: " <>
          inspect(other, limit: 5)
      )

  defp lost(ref, acc) do
    receive do
      {:causeway, :stream_missing, ^ref, missed} -> lost(ref, acc ++ missed)
    after
      0 -> acc
    end
  end

  defp sources!(opts) do
    case Keyword.get(opts, :store) do
      %Causeway.Stores{stores: stores} ->
        if Keyword.has_key?(opts, :nodes),
          do: raise(ArgumentError, ":nodes and a :store of several stores cannot be combined")

        {timeout, query} = Keyword.pop(opts, :timeout, 5_000)
        Causeway.Options.int!(timeout, :timeout, 0..0xFFFF_FFFF)
        {Enum.map(stores, &{:store, &1}), timeout, query, []}

      _ ->
        {nodes, timeout, query} = Cluster.split!(opts)
        {up, down} = Enum.split_with(nodes, &(&1 == node() or &1 in Node.list()))
        {Enum.map(up, &{:node, &1}), timeout, query, Enum.map(down, &{&1, :not_connected})}
    end
  end

  # merges out events until a source that has more runs dry (or the limit
  # is reached, or a page's worth is out), then refills the dry ones
  defp step(sources, left, ctx) do
    {sources, missed} = fill(sources, left, ctx)
    report(missed, ctx)

    if Enum.all?(sources, &(&1.buf == [])) do
      {:halt, :done}
    else
      {out, sources, left} = take(sources, left, ctx, [], ctx.page)
      {out, {sources, left}}
    end
  end

  defp take(sources, left, _ctx, acc, budget) when left == 0 or budget == 0,
    do: {Enum.reverse(acc), sources, left}

  defp take(sources, left, ctx, acc, budget) do
    if Enum.any?(sources, &(&1.buf == [] and not &1.done)) do
      {Enum.reverse(acc), sources, left}
    else
      case best(sources, ctx) do
        nil ->
          {Enum.reverse(acc), sources, left}

        i ->
          %Source{buf: [e | rest]} = s = Enum.at(sources, i)
          sources = List.replace_at(sources, i, %{s | buf: rest})
          left = if left == :infinity, do: :infinity, else: left - 1
          take(sources, left, ctx, [e | acc], budget - 1)
      end
    end
  end

  # the index of the source whose head comes first on the merged axis
  defp best(sources, ctx) do
    sources
    |> Enum.with_index()
    |> Enum.filter(fn {s, _} -> s.buf != [] end)
    |> Enum.map(fn {%Source{buf: [e | _]}, i} -> {Cluster.event_key(e, ctx.offsets), i} end)
    |> case do
      [] -> nil
      keyed when ctx.desc -> keyed |> Enum.max() |> elem(1)
      keyed -> keyed |> Enum.min() |> elem(1)
    end
  end

  # asks every source that has run dry and has more for its next page (the
  # nodes in parallel): {sources, missing}
  defp fill(sources, left, ctx) do
    dry = for %Source{buf: [], done: false} = s <- sources, do: s.id
    n = if left == :infinity, do: ctx.page, else: min(ctx.page, left)

    {pages, missing} = fetch(dry, sources, n, ctx)

    sources =
      Enum.map(sources, fn s ->
        case Map.fetch(pages, s.id) do
          {:ok, {:ok, {events, next}}} when is_list(events) ->
            done = events == [] or next == nil
            %{s | buf: events, cursor: next, done: done}

          {:ok, _missing} ->
            %{s | done: true}

          :error ->
            s
        end
      end)

    {sources, missing}
  end

  defp fetch([], _sources, _n, _ctx), do: {%{}, []}

  defp fetch(dry, sources, n, ctx) do
    cursor = Map.new(sources, &{&1.id, &1.cursor})
    query = fn id -> Keyword.merge(ctx.base, after: cursor[id], limit: n) end

    {nodes, stores} = Enum.split_with(dry, &match?({:node, _}, &1))

    # nodes whose cursors differ are asked one by one, still in parallel
    node_pages =
      nodes
      |> Task.async_stream(
        fn id -> {id, Cluster.ask_one(id, :events_page, [query.(id)], ctx.timeout)} end,
        timeout: :infinity,
        max_concurrency: max(length(nodes), 1)
      )
      |> Enum.map(fn {:ok, r} -> r end)

    store_pages =
      for id <- stores, do: {id, Cluster.ask_one(id, :events_page, [query.(id)], ctx.timeout)}

    pages = node_pages ++ store_pages

    missing =
      Enum.flat_map(pages, fn
        {_id, {:ok, {events, _next}}} when is_list(events) -> []
        {_id, {:missing, miss}} -> [miss]
        {{:node, n}, {:ok, other}} -> [{n, {:malformed, other}}]
        {{:store, s}, {:ok, other}} -> [{s.dir, {:malformed, other}}]
      end)

    {Map.new(pages), missing}
  end

  defp report([], _ctx), do: :ok

  defp report(missed, %{report: {owner, ref}}) do
    send(owner, {:causeway, :stream_missing, ref, missed})

    Logger.warning(
      "Causeway: stream_events goes on without " <>
        Enum.map_join(missed, ", ", fn {n, r} -> "#{n} (#{inspect(r, limit: 5)})" end)
    )
  end
end
