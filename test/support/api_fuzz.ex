defmodule Causeway.ApiFuzz do
  @moduledoc false
  # Calls every public function of Causeway, Causeway.Runtime, Causeway.Export
  # and the tracer with nasty terms (Causeway.Nasty) and valid values mixed,
  # against a real instance on a real store directory, and sorts what came
  # back: a documented result, an ArgumentError, a %Causeway.Error{} (raised
  # or returned) — or an unclear error (any other exception, exit or throw,
  # or a raw {:error, _} tuple), kept with its signature. Meant to run in a
  # child VM (`Causeway.ChildVM`), so that a crash or a hang is seen.

  alias Causeway.{Nasty, Runtime}

  @marker_module Causeway.Nasty
  @call_timeout 15_000

  @doc """
  Starts an instance on `dir`, writes and flushes `markers` marker events,
  then makes `calls` random calls. `retention?` lets random instances be
  started with a retention policy (which may delete the markers).
  Returns `%{calls:, results: %{kind => n}, unclear: %{signature => example},
  markers: n}`.
  """
  def run(dir, seed, calls, opts \\ []) do
    Nasty.seed(seed)
    markers = Keyword.get(opts, :markers, 100)
    retention? = Keyword.get(opts, :retention, false)
    {:ok, dev} = StringIO.open("")
    Process.group_leader(self(), dev)
    tmp = Path.join(Path.dirname(dir), "fuzz-files")
    File.mkdir_p!(tmp)
    File.cd!(tmp)
    # the store under another name: a second writer through it must be refused
    alias_dir = Path.join(tmp, "store-link")
    _ = File.rm(alias_dir)
    :ok = File.ln_s(dir, alias_dir)

    {:ok, pid} = Causeway.start_link(dir: dir)
    Process.unlink(pid)
    write_markers(markers)

    st = %{
      dir: dir,
      alias: alias_dir,
      tmp: tmp,
      stores: [],
      sessions: [],
      watches: [],
      ids: [1],
      retention: retention?
    }

    {results, unclear, _st} =
      Enum.reduce(1..calls//1, {%{}, %{}, st}, fn _, {results, unclear, st} ->
        st = maybe_restart(st)
        {name, fun} = Nasty.pick(ops(st))
        {kind, detail, st} = classify(name, fun, st)
        results = Map.update(results, kind, 1, &(&1 + 1))

        unclear =
          if kind == :unclear,
            do: Map.put_new(unclear, detail, name),
            else: unclear

        {results, unclear, st}
      end)

    %{calls: calls, results: results, unclear: unclear, markers: markers}
  end

  @doc "pipeline_start with sizes that Causeway.Options would refuse (the native check)."
  def native_start(dir, ring, shards) do
    {_, native} = Causeway.Options.start!(dir: dir)
    Causeway.Native.pipeline_start(%{native | ring_size: ring, shards: shards}, self())
  end

  @doc "Writes `n` marker events (function_entry of Causeway.Nasty.marker/1) and flushes."
  def write_markers(n) do
    for i <- 1..n//1 do
      id = Runtime.function_entry(@marker_module, :marker, [i])
      Runtime.function_exit(id, {:marker, i})
    end

    :ok = Causeway.flush()
  end

  @doc "How many marker entries a store holds."
  def count_markers(store) do
    length(
      Causeway.events(
        store: store,
        module: @marker_module,
        function: :marker,
        type: :function_entry,
        limit: :infinity
      )
    )
  end

  defp maybe_restart(st) do
    if Process.whereis(Causeway) == nil and :rand.uniform(3) == 1 do
      case Causeway.start_link(dir: st.dir) do
        {:ok, pid} -> Process.unlink(pid)
        _ -> :ok
      end
    end

    st
  end

  # start_link/1 whose instance outlives the call's process
  defp start_unlinked(opts) do
    case Causeway.start_link(opts) do
      {:ok, p} ->
        Process.unlink(p)
        {:ok, p}

      other ->
        other
    end
  end

  defp classify(name, fun, st) do
    parent = self()
    gl = Process.group_leader()

    {pid, ref} =
      spawn_monitor(fn ->
        Process.group_leader(self(), gl)

        r =
          try do
            {:returned, fun.()}
          rescue
            e -> {:raised, e, __STACKTRACE__}
          catch
            kind, reason -> {:caught, kind, reason}
          end

        send(parent, {self(), r})
        # keep what the call started (instances are unlinked, sessions are
        # owned by this process) until the driver moves on
        receive do
          :done -> :ok
        after
          0 -> :ok
        end
      end)

    receive do
      {^pid, r} ->
        Process.demonitor(ref, [:flush])
        sort(name, r, st)
    after
      @call_timeout ->
        Process.exit(pid, :kill)
        {:unclear, {name, :hang}, st}
    end
  end

  defp sort(name, {:returned, v}, st) do
    st = remember(st, v)

    case v do
      {:error, %Causeway.Error{}} -> {:error_struct, nil, st}
      {:error, other} -> {:unclear, {name, :raw_error, shape(other)}, st}
      _ -> {:ok, nil, st}
    end
  end

  defp sort(_name, {:raised, %ArgumentError{}, _}, st), do: {:argument_error, nil, st}
  defp sort(_name, {:raised, %Causeway.Error{}, _}, st), do: {:causeway_error, nil, st}

  defp sort(name, {:raised, e, stack}, st) do
    where =
      case stack do
        [{m, f, a, _} | _] -> "#{inspect(m)}.#{f}/#{if is_list(a), do: length(a), else: a}"
        _ -> "?"
      end

    msg = e |> Exception.message() |> String.slice(0, 120)
    {:unclear, {name, e.__struct__, where, msg}, st}
  end

  defp sort(name, {:caught, kind, reason}, st),
    do: {:unclear, {name, kind, shape(reason)}, st}

  defp shape(t), do: inspect(t, limit: 4, printable_limit: 60) |> String.slice(0, 120)

  defp remember(st, {:ok, %Causeway.Store{} = s}),
    do: %{st | stores: Enum.take([s | st.stores], 4)}

  defp remember(st, {:ok, %Causeway.Tracer{} = s}),
    do: %{st | sessions: Enum.take([s | st.sessions], 4)}

  defp remember(st, {:ok, %Causeway.Watch{} = w}),
    do: %{st | watches: Enum.take([w | st.watches], 4)}

  defp remember(st, [%Causeway.Event{} | _] = evs),
    do: %{st | ids: Enum.take(Enum.map(evs, & &1.id) ++ st.ids, 8)}

  defp remember(st, _), do: st

  # ------------------------------------------------------------ the calls

  defp ops(st) do
    pids = [self(), Process.whereis(Causeway) || self(), spawn(fn -> :ok end)]
    ids = st.ids
    stores = st.stores
    sessions = st.sessions

    name = fn ->
      Nasty.arg([Causeway, Causeway, :fuzz_instance, :not_an_instance, :global_name_server])
    end

    file = fn ext -> Nasty.arg([Path.join(st.tmp, "out#{ext}")]) end
    id = fn -> Nasty.arg(ids) end
    pid = fn -> Nasty.arg(pids) end
    store_or_instance = [store: Nasty.arg(stores ++ [nil]), instance: Nasty.arg([Causeway])]

    query_opts = [
      pid: Nasty.arg(pids),
      type: Nasty.arg([:function_entry, [:state_change, :function_exit]]),
      module: Nasty.arg([@marker_module]),
      function: :marker,
      arity: Nasty.arg([1, 0]),
      call_id: Nasty.arg(ids),
      since: Nasty.arg([DateTime.utc_now(), ~T[00:00:00]]),
      until: Nasty.arg([DateTime.utc_now()]),
      limit: Nasty.arg([1, 10, :infinity]),
      order: Nasty.arg([:asc, :desc]),
      after: Nasty.arg(ids),
      links: Nasty.arg([true, false])
    ]

    start_opts =
      [
        dir: Nasty.arg([st.dir, st.alias, Path.join(st.tmp, "other-store")]),
        name: Nasty.arg([Causeway, :fuzz_instance]),
        ring_size: Nasty.arg([1_024, 65_536, 2 ** 24, 3]),
        shards: Nasty.arg([1, 2, 64]),
        overflow: Nasty.arg([:drop_newest, :drop_oldest]),
        workers: Nasty.arg([{1, 2}, 2, {2, 16}]),
        batch_size: Nasty.arg([1, 1_000]),
        flush_interval_ms: Nasty.arg([1, 5]),
        max_term_bytes: Nasty.arg([64, 2_048, 1_048_576]),
        max_depth: Nasty.arg([1, 16]),
        redact: Nasty.arg([[:password]]),
        memory_budget: Nasty.arg([1_048_576, 1_073_741_824]),
        sync_writes: Nasty.arg([true, false]),
        covering_pid_index: Nasty.arg([true, false])
      ] ++
        if(st.retention,
          do: [retention: Nasty.arg([[max_bytes: 1], [max_age: 1], [max_age: {1, :day}]])],
          else: []
        )

    [
      {:start_link, fn -> start_unlinked(Nasty.opts(start_opts)) end},
      # a second writer on the store, under its other name or its own
      {:second_writer,
       fn -> start_unlinked(dir: Nasty.arg([st.alias, st.dir]), name: :fuzz_instance) end},
      {:child_spec, fn -> Causeway.child_spec(Nasty.opts(start_opts)) end},
      {:stop, fn -> if :rand.uniform(4) == 1, do: Causeway.stop(name.()), else: :ok end},
      {:flush, fn -> Causeway.flush(name.(), Nasty.arg([1_000, :infinity])) end},
      {:configure,
       fn ->
         Causeway.configure(
           Nasty.opts(batch_size: 10, workers: {1, 2}, max_term_bytes: 4_096, max_depth: 8),
           name.()
         )
       end},
      {:enforce_retention, fn -> Causeway.enforce_retention(name.()) end},
      {:capture,
       fn ->
         Causeway.capture(
           Nasty.arg([:global, {:module, Enum}, {:pid, self()}]),
           Nasty.arg([true]),
           name.()
         )
       end},
      {:subscribe, fn -> Causeway.subscribe(Nasty.arg([:health, :backpressure]), name.()) end},
      {:unsubscribe,
       fn -> Causeway.unsubscribe(Nasty.arg([:health, :backpressure]), name.()) end},
      {:metrics, fn -> Causeway.metrics(name.()) end},
      {:health, fn -> Causeway.health(name.()) end},
      {:open,
       fn ->
         Causeway.open(
           Nasty.arg([st.dir, st.alias, Path.join(st.tmp, "missing")]),
           Nasty.opts(read_only: true, read_only: false)
         )
       end},
      {:close, fn -> Causeway.close(Nasty.arg(stores ++ [%Causeway.Store{}])) end},
      {:trace,
       fn ->
         Causeway.trace(
           Nasty.arg([Causeway.Nasty, {Enum, :map, 2}, {Enum, :map, -1}, self(), [self()]]),
           Nasty.opts(
             max_events: 100,
             duration_ms: 1_000,
             what: [:call, :return],
             args: [:_, :_],
             max_msg_bytes: 256
           )
         )
       end},
      {:stop_trace, fn -> Causeway.stop_trace(Nasty.arg(sessions)) end},
      {:watch,
       fn ->
         Causeway.watch(
           Nasty.arg([Process.whereis(Causeway) || self(), Causeway.SessionSupervisor, self()]),
           Nasty.opts(max_events: 10, timeout: 200, duration_ms: 500, max_state_bytes: 1_000)
         )
       end},
      {:unwatch, fn -> Causeway.unwatch(Nasty.arg(st.watches)) end},
      {:trace_info, fn -> Causeway.trace_info(Nasty.arg(sessions)) end},
      {:events, fn -> Causeway.events(Nasty.opts(query_opts ++ store_or_instance)) end},
      {:stream_events,
       fn ->
         Causeway.stream_events(Nasty.opts([page_size: 3] ++ query_opts))
         |> Enum.take(5)
       end},
      {:event, fn -> Causeway.event(id.(), Nasty.opts(store_or_instance)) end},
      {:call_tree,
       fn ->
         Causeway.call_tree(
           Nasty.arg(ids ++ pids),
           Nasty.opts([max_nodes: 5] ++ store_or_instance)
         )
       end},
      {:causal_chain, fn -> Causeway.causal_chain(id.(), Nasty.opts(max: 3)) end},
      {:message_flow, fn -> Causeway.message_flow(pid.(), pid.(), Nasty.opts(limit: 3)) end},
      {:state_history, fn -> Causeway.state_history(pid.(), Nasty.opts(limit: 3)) end},
      {:state_at,
       fn -> Causeway.state_at(pid.(), Nasty.arg([DateTime.utc_now()]), Nasty.opts([])) end},
      {:process_tree, fn -> Causeway.process_tree(pid.(), Nasty.opts(max_depth: 2)) end},
      {:print_call_tree,
       fn -> Causeway.print_call_tree(Nasty.arg(ids ++ pids), Nasty.opts(max_lines: 5)) end},
      {:print_timeline, fn -> Causeway.print_timeline(pid.(), Nasty.opts(limit: 5)) end},
      {:function_entry,
       fn ->
         Runtime.function_entry(Nasty.arg([@marker_module]), Nasty.arg([:f]), Nasty.term())
       end},
      {:function_exit, fn -> Runtime.function_exit(id.(), Nasty.term()) end},
      {:message_send, fn -> Runtime.message_send(pid.(), Nasty.term()) end},
      {:message_receive, fn -> Runtime.message_receive(Nasty.term()) end},
      {:message_receive2,
       fn -> Runtime.message_receive(Nasty.arg([nil | pids]), Nasty.term()) end},
      {:message_handled, fn -> Runtime.message_handled() end},
      {:state_change, fn -> Runtime.state_change(Nasty.term(), Nasty.term()) end},
      {:process_spawn, fn -> Runtime.process_spawn(pid.()) end},
      {:process_exit, fn -> Runtime.process_exit(pid.(), Nasty.term()) end},
      {:error,
       fn -> Runtime.error(Nasty.arg([:error, :throw]), Nasty.term(), Nasty.arg([[]])) end},
      {:chrome_trace,
       fn -> Causeway.Export.chrome_trace(file.(".json"), Nasty.opts(limit: 10, pid: self())) end},
      {:chrome_events,
       fn ->
         Causeway.Export.chrome_events(Nasty.arg([Causeway.events(limit: 5), []]))
       end},
      {:mermaid,
       fn ->
         Causeway.Export.mermaid(file.(".mmd"), Nasty.opts(pids: pids, limit: 5))
       end},
      {:mermaid_text, fn -> Causeway.Export.mermaid_text(Nasty.opts(pids: pids, limit: 5)) end}
    ]
  end
end
