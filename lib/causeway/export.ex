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
  """

  alias Causeway.{Event, JSON}

  @doc """
  Writes the events selected by `opts` (the filters of `Causeway.events/1`;
  `:limit` defaults to 100 000) as Chrome Trace Event JSON to `path`.
  Returns `{:ok, %{path: path, events: count, trace_events: count}}`.
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

    events = Causeway.events(Keyword.merge([limit: 100_000], opts))
    trace = chrome_events(events)
    json = JSON.encode_to_iodata(%{"traceEvents" => trace, "displayTimeUnit" => "ns"})

    case File.write(path, json) do
      :ok ->
        {:ok, %{path: path, events: length(events), trace_events: length(trace)}}

      {:error, reason} ->
        {:error, %Causeway.Error{kind: :io, message: "#{path}: #{:file.format_error(reason)}"}}
    end
  end

  @doc "The Chrome trace events (maps) for a list of `Causeway.Event`s."
  @spec chrome_events([Event.t()]) :: [map()]
  def chrome_events([]), do: []

  def chrome_events(events) when is_list(events) do
    unless Causeway.Options.list_of?(events, &match?(%Event{}, &1)),
      do:
        raise(
          ArgumentError,
          "chrome_events/1 expects a list of %Causeway.Event{}, got: #{inspect(events, limit: 3)}"
        )

    chrome_events_of(events)
  end

  def chrome_events(other),
    do:
      raise(
        ArgumentError,
        "chrome_events/1 expects a list of %Causeway.Event{}, got: #{inspect(other, limit: 3)}"
      )

  defp chrome_events_of(events) do
    t0 = events |> Enum.map(& &1.timestamp) |> Enum.min()
    tids = events |> Enum.map(& &1.pid) |> Enum.uniq() |> Enum.with_index(1) |> Map.new()
    by_id = Map.new(events, &{&1.id, &1})

    names =
      for {pid, tid} <- tids,
          do: %{
            "name" => "thread_name",
            "ph" => "M",
            "pid" => 1,
            "tid" => tid,
            "args" => %{"name" => inspect(pid)}
          }

    process = [
      %{
        "name" => "process_name",
        "ph" => "M",
        "pid" => 1,
        "tid" => 0,
        "args" => %{"name" => to_string(node())}
      }
    ]

    body =
      Enum.flat_map(events, fn e ->
        base = %{"pid" => 1, "tid" => tids[e.pid], "ts" => us(e.timestamp - t0)}
        trace_event(e, base, by_id, tids)
      end)

    process ++ names ++ body
  end

  defp us(ns), do: ns / 1000

  defp trace_event(%Event{type: :function_entry} = e, base, _, _) do
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

  defp trace_event(%Event{type: :function_exit} = e, base, _, _) do
    [
      Map.merge(base, %{
        "ph" => "E",
        "name" => Event.mfa_string(e),
        "cat" => "call",
        "args" => %{"result" => short(e.data)}
      })
    ]
  end

  defp trace_event(%Event{type: :message_send} = e, base, by_id, _) do
    slice =
      Map.merge(base, %{
        "ph" => "X",
        "dur" => 1,
        "name" => "send",
        "cat" => "message",
        "args" => %{"message" => short(e.data.message), "to" => inspect(e.data.to)}
      })

    flow =
      if received?(e, by_id),
        do: [
          Map.merge(base, %{"ph" => "s", "id" => e.id, "name" => "message", "cat" => "message"})
        ],
        else: []

    [slice | flow]
  end

  defp trace_event(%Event{type: :message_receive} = e, base, by_id, _) do
    slice =
      Map.merge(base, %{
        "ph" => "X",
        "dur" => 1,
        "name" => "receive",
        "cat" => "message",
        "args" => %{"message" => short(e.data.message), "from" => inspect(e.data.from)}
      })

    flow =
      case Enum.find_value(e.links || [], fn
             {:receives, s} -> s
             _ -> nil
           end) do
        s when is_map_key(by_id, s) ->
          [
            Map.merge(base, %{
              "ph" => "f",
              "bp" => "e",
              "id" => s,
              "name" => "message",
              "cat" => "message"
            })
          ]

        _ ->
          []
      end

    [slice | flow]
  end

  defp trace_event(%Event{} = e, base, _, _) do
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

  defp received?(e, by_id),
    do:
      Enum.any?(e.links || [], fn
        {:received_by, r} -> is_map_key(by_id, r)
        _ -> false
      end)

  defp short(term), do: inspect(term, limit: 20, printable_limit: 200)

  @doc """
  Writes a Mermaid sequence diagram of the messages between `opts[:pids]` (each
  send with its receive when matched; a send never received is drawn as an
  async arrow marked "not received") to `path`. Other options: `:limit`
  (messages, default 500), `:store`, `:instance`.
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
        [:pids, :limit, :store, :instance],
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

    limit = Causeway.Query.count!(opts, :limit, 500)
    # each pair reads at most `limit` messages; the first `limit` of all are among them
    query =
      Keyword.take(opts, [:store, :instance]) ++
        [limit: if(limit == 0, do: :infinity, else: limit)]

    alias_of = pids |> Enum.with_index(1) |> Map.new(fn {p, i} -> {p, "P#{i}"} end)

    flows =
      for a <- pids, b <- pids, a < b do
        Causeway.message_flow(a, b, query)
      end
      |> List.flatten()
      |> Enum.sort_by(& &1.send.id)
      |> then(fn all -> if limit == 0, do: all, else: Enum.take(all, limit) end)

    participants = for p <- pids, do: "    participant #{alias_of[p]} as #{inspect(p)}"

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

  # Mermaid's message text ends at a newline; `;` and `#` start entities.
  defp mermaid_escape(s),
    do:
      s
      |> String.replace(["\n", "\r"], " ")
      |> String.replace("#", "#35;")
      |> String.replace(";", "#59;")
end
