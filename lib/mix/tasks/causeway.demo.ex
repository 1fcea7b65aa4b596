defmodule Mix.Tasks.Causeway.Demo do
  @shortdoc "Records a sample workload into RocksDB and prints a dashboard and queries"
  @moduledoc """
  The main job on its embedded default: starts Causeway on a fresh store
  (`_causeway/demo`, or `--dir DIR`), runs `Causeway.Demo.run/2` (several
  processes calling instrumented functions, a GenServer, messages), flushes,
  stops the instance, reopens the store read-only and prints what it reads back:
  a dashboard of the pipeline's figures, a call tree, one process's timeline, a
  state history with time travel and a causal chain.

      mix causeway.demo [--dir DIR] [--workers N] [--rounds N]
  """
  use Mix.Task

  @impl true
  def run(argv) do
    {opts, _, _} =
      OptionParser.parse(argv, strict: [dir: :string, workers: :integer, rounds: :integer])

    dir = Path.expand(opts[:dir] || "_causeway/demo")
    workers = opts[:workers] || 4
    rounds = opts[:rounds] || 25

    Mix.Task.run("app.start")
    File.rm_rf!(dir)

    {:ok, _} = Causeway.start_link(dir: dir)
    # Ledger is not instrumented: its calls are recorded by the erl_tracer NIF
    {:ok, session} = Causeway.trace(Causeway.Demo.Ledger, max_events: 100_000)
    t0 = System.monotonic_time(:millisecond)
    %{store: store, workers: [first | _]} = Causeway.Demo.run(workers, rounds)
    Causeway.stop_trace(session)
    :ok = Causeway.flush()
    elapsed = System.monotonic_time(:millisecond) - t0
    metrics = Causeway.metrics()
    Causeway.stop()

    {:ok, s} = Causeway.open(dir, read_only: true)
    all = Causeway.events(store: s, limit: :infinity, links: false)

    IO.puts("""

    == Causeway demo: #{workers} workers × #{rounds} rounds, recorded in #{elapsed} ms into #{dir}
    #{Causeway.Dashboard.render(metrics)}
    read back from RocksDB (store reopened read-only): #{length(all)} events
    #{Enum.map_join(Enum.frequencies_by(all, & &1.type) |> Enum.sort(), "\n", fn {t, n} -> "  #{String.pad_trailing(to_string(t), 16)} #{n}" end)}
    """)

    [entry | _] =
      Causeway.events(store: s, pid: first, type: :function_entry, function: :score, limit: 1)

    IO.puts("== call tree of #{Causeway.Event.mfa_string(entry)} in #{inspect(first)}")
    Causeway.print_call_tree(entry.call_id, store: s)

    IO.puts("\n== first events of #{inspect(first)}")
    IO.puts(Causeway.Query.timeline(first, store: s, limit: 12))

    history = Causeway.state_history(store, store: s, limit: 3)
    IO.puts("\n== state history of the store #{inspect(store)} (first 3 of its changes)")
    Enum.each(history, &IO.puts("  " <> inspect(&1)))

    case history do
      [_, second | _] ->
        {:ok, state, _} = Causeway.state_at(store, second.wall_time, store: s)
        IO.puts("  state_at(#{DateTime.to_time(second.wall_time)}) → #{inspect(state, limit: 6)}")

      _ ->
        :ok
    end

    traced =
      Causeway.events(
        store: s,
        module: Causeway.Demo.Ledger,
        type: :function_exit,
        limit: :infinity
      )

    IO.puts(
      "\n== traced without recompiling (Causeway.trace/2): #{length(traced)} returns of Causeway.Demo.Ledger.record/2, e.g."
    )

    Enum.each(Enum.take(traced, 2), &IO.puts("  " <> inspect(&1)))

    trace_path = Path.join(dir, "trace.json")

    {:ok, %{trace_events: n}} =
      Causeway.Export.chrome_trace(trace_path, store: s, pid: first, limit: 2_000)

    IO.puts(
      "\n== Chrome trace of #{inspect(first)}: #{trace_path} (#{n} trace events; open it in https://ui.perfetto.dev)"
    )

    case List.last(history) do
      nil ->
        :ok

      change ->
        IO.puts("\n== causal chain of #{inspect(change)}")

        for {e, via} <- Causeway.causal_chain(change.id, store: s),
            do: IO.puts("  #{if via, do: "#{via} ← ", else: ""}#{inspect(e)}")
    end

    :ok
  end
end
