defmodule Causeway.Export.ChromeStream do
  @moduledoc false
  # `Causeway.Export.chrome_trace/2` of one store on this node's clock,
  # streamed: events are read page by page (`Causeway.stream_events/1`)
  # and written to the file as they come, so an export of 100 000 events
  # never holds the whole document (or all its events) in one heap. What
  # it keeps across pages is small per event: the track of each process,
  # and the sends whose receive is still to come (a flow is drawn only when
  # both its ends are exported, as for the in-memory layout).

  alias Causeway.{Export, JSON}

  @page 2_000

  @doc false
  # {:ok, %{events:, trace_events:}} or {:error, %Causeway.Error{}}
  def write(path, opts) do
    # the filters are checked (and a bad one raised) before the file is made
    stream = Causeway.stream_events(Keyword.put_new(opts, :page_size, @page))

    case File.open(path, [:write, :binary, :delayed_write]) do
      {:ok, io} ->
        try do
          {:ok, run(io, stream)}
        after
          File.close(io)
        end

      {:error, reason} ->
        {:error, %Causeway.Error{kind: :io, message: "#{path}: #{:file.format_error(reason)}"}}
    end
  end

  defp run(io, stream) do
    IO.binwrite(io, ~s({"displayTimeUnit":"ns","traceEvents":[))
    st = %{io: io, first: true, t0: nil, tids: %{}, pending: %{}, events: 0, trace: 0}

    st =
      stream
      |> Stream.chunk_every(@page)
      |> Enum.reduce(st, fn page, st -> Enum.reduce(page, st, &event/2) end)

    IO.binwrite(io, "]}")
    %{events: st.events, trace_events: st.trace, nodes: min(st.events, 1), missing: []}
  end

  defp event(e, st) do
    # the process track comes with the first event (no events: an empty trace)
    st = if st.t0, do: st, else: emit(st, [Export.process_name(1, node())])
    t0 = st.t0 || e.timestamp
    {tid, st} = tid(%{st | t0: t0}, e.pid)
    base = %{"pid" => 1, "tid" => tid, "ts" => max(e.timestamp - t0, 0) / 1000}
    links = e.links || []

    # a send waits for its receive; a receive draws the flow of a send
    # exported before it
    {flow, extra, st} =
      case e.type do
        :message_send ->
          st =
            Enum.reduce(links, st, fn
              {:received_by, r}, st -> put_in(st.pending[r], {e.id, base})
              _, st -> st
            end)

          {nil, [], st}

        :message_receive ->
          case Map.pop(st.pending, e.id) do
            {{s, send_base}, pending} ->
              if {:receives, s} in links do
                start =
                  Map.merge(send_base, %{
                    "ph" => "s",
                    "id" => s,
                    "name" => "message",
                    "cat" => "message"
                  })

                {{:end, s, nil}, [start], %{st | pending: pending}}
              else
                {nil, [], %{st | pending: pending}}
              end

            {nil, _} ->
              {nil, [], st}
          end

        _ ->
          {nil, [], st}
      end

    st = emit(st, extra ++ Export.trace_event(e, base, flow))
    %{st | events: st.events + 1}
  end

  defp tid(st, pid) do
    case st.tids do
      %{^pid => tid} ->
        {tid, st}

      tids ->
        tid = map_size(tids) + 1

        meta = %{
          "name" => "thread_name",
          "ph" => "M",
          "pid" => 1,
          "tid" => tid,
          "args" => %{"name" => inspect(pid)}
        }

        {tid, emit(%{st | tids: Map.put(tids, pid, tid)}, [meta])}
    end
  end

  defp emit(st, []), do: st

  defp emit(st, [ev | rest]) do
    IO.binwrite(st.io, [if(st.first, do: "", else: ","), JSON.encode_to_iodata(ev)])
    emit(%{st | first: false, trace: st.trace + 1}, rest)
  end
end
