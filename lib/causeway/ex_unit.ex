defmodule Causeway.ExUnit do
  @moduledoc """
  Records a test run and, under each failing test, prints what it did.

  One line in `test/test_helper.exs`, before `ExUnit.start/1`:

      Causeway.ExUnit.start()
      ExUnit.start()

  `start/1` starts a Causeway instance recording into `_causeway/test`
  (cleared first) and adds this module to ExUnit's formatters (next to the
  ones configured, `ExUnit.CLIFormatter` by default; the same as
  `ExUnit.configure(formatters: [ExUnit.CLIFormatter, Causeway.ExUnit])`).
  When a test fails, a bounded summary is printed after ExUnit's report of
  the failure: the calls recorded while the test ran (as call trees), the
  messages between the processes involved, their last state changes, and the
  line to type in IEx to explore the whole window. After the run, each
  test's events (passed or failed) are `events/2`.

  Options: `:dir` (default `"_causeway/test"`), `:max_trees` (5),
  `:max_lines` (40 per tree), `:max_messages` (20), `:max_states` (10);
  every other option goes to `Causeway.start_link/1`. The overflow policy
  defaults to `:wait` (lossless) when the instance supports it.

  A test's events are the events recorded, in every process, from when
  this formatter saw it start (less 5 ms: it may see it late) for the test's
  run time (plus 5 ms), by wall-clock time. For tests of `async: false` modules that is the
  test's own work (and possibly the last milliseconds of the test before
  it); an async test's window can also hold events of the tests that ran
  beside it (the summary says so). Tagging each event with its test
  (`Causeway.events(test: ...)`) needs the native capture to carry a
  per-process tag, which it does not yet; `events/2` gives a test's window.
  """

  use GenServer

  # how much earlier than this process saw a test start its window begins
  @slack_us 5_000

  @defaults [
    dir: "_causeway/test",
    max_trees: 5,
    max_lines: 40,
    max_messages: 20,
    max_states: 10
  ]

  @doc """
  Starts the recording instance and registers the formatter. Call it before
  `ExUnit.start/1`.
  """
  @spec start(keyword()) :: :ok
  def start(opts \\ []) do
    {own, instance} = Keyword.split(opts, Keyword.keys(@defaults))
    own = Keyword.merge(@defaults, own)
    File.rm_rf!(own[:dir])
    instance = Keyword.put(instance, :dir, own[:dir])

    instance =
      if wait_supported?(instance),
        do: Keyword.put_new(instance, :overflow, :wait),
        else: instance

    {:ok, pid} = Causeway.start_link(instance)
    # the instance outlives the caller (the test helper's process)
    Process.unlink(pid)

    # loaded first: loading :ex_unit later would reset what is configured here
    _ = Application.load(:ex_unit)
    formatters = Keyword.get(ExUnit.configuration(), :formatters, [ExUnit.CLIFormatter])
    # in place of ExUnit.CLIFormatter (which it runs), so that each summary
    # is printed right under its failure
    cli? = ExUnit.CLIFormatter in formatters

    formatters =
      if cli?,
        do: Enum.map(formatters, &if(&1 == ExUnit.CLIFormatter, do: __MODULE__, else: &1)),
        else: formatters ++ [__MODULE__]

    ExUnit.configure(
      formatters: Enum.uniq(formatters),
      causeway: own ++ [name: Keyword.get(instance, :name, Causeway), cli: cli?]
    )
  end

  defp wait_supported?(opts) do
    Causeway.Options.start!(Keyword.put(opts, :overflow, :wait))
    true
  rescue
    ArgumentError -> false
  end

  ## the formatter

  @impl true
  def init(config) do
    own = Keyword.merge(@defaults, Keyword.get(config, :causeway, []))

    cli =
      if own[:cli] do
        {:ok, cli} = ExUnit.CLIFormatter.init(config)
        cli
      end

    {:ok,
     %{
       opts: Keyword.put_new(own, :name, Causeway),
       cli: cli,
       started: %{},
       async: MapSet.new(),
       windows: %{}
     }}
  end

  @impl true
  def handle_cast({:test_started, test} = event, state) do
    # noted first: the test may already be running
    state = put_in(state.started[key(test)], DateTime.utc_now())
    {:noreply, state} = cli(event, state)
    {:noreply, state}
  end

  def handle_cast(event, state) do
    {:noreply, state} = cli(event, state)
    handle(event, state)
  end

  defp cli(_event, %{cli: nil} = state), do: {:noreply, state}

  defp cli(event, state) do
    {:noreply, cli} = ExUnit.CLIFormatter.handle_cast(event, state.cli)
    {:noreply, %{state | cli: cli}}
  end

  defp handle({:module_started, %{name: module}}, state) do
    state =
      if async_module?(module), do: %{state | async: MapSet.put(state.async, module)}, else: state

    {:noreply, state}
  end

  defp handle({:test_finished, test}, state) do
    {started_at, started} = Map.pop(state.started, key(test))
    now = DateTime.utc_now()
    time = test.time || 0
    # the window: from when this process saw the test start (it may see it
    # a little late) to that plus the test's run time, each side widened by
    # a slack, and never past now
    started_at = started_at || DateTime.add(now, -time, :microsecond)
    since = DateTime.add(started_at, -@slack_us, :microsecond)
    until = DateTime.add(started_at, time + @slack_us, :microsecond)
    until = if DateTime.compare(until, now) == :gt, do: now, else: until

    if match?({:failed, _}, test.state) do
      async? = MapSet.member?(state.async, test.module)

      try do
        IO.puts(summary(test, since, until, async?, state.opts))
      catch
        kind, reason ->
          IO.puts(
            "     Causeway: no summary for this test (#{Exception.format_banner(kind, reason)})"
          )
      end
    end

    # by strings: read back in a VM that has not these atoms
    name = {inspect(test.module), Atom.to_string(test.name)}
    windows = Map.put(state.windows, name, {since, until})
    {:noreply, %{state | started: started, windows: windows}}
  end

  defp handle({:suite_finished, _}, state) do
    _ = safe_flush(state.opts[:name])
    # the tests' windows, for events/2 (from this VM or a later one)
    _ = File.write(windows_file(state.opts[:dir]), :erlang.term_to_binary(state.windows))
    {:noreply, state}
  end

  defp handle(_event, state), do: {:noreply, state}

  defp key(%ExUnit.Test{module: m, name: n}), do: {m, n}

  defp windows_file(dir), do: Path.join(dir, "causeway_ex_unit_tests.etf")

  ## after the run

  @doc """
  The events recorded while a test ran, after the run: `test` is its name
  (`"adds an item"` or `"test adds an item"`) or `{TestModule, name}`. Reads
  the windows the formatter saved in `dir` (default `"_causeway/test"`), then
  queries with the other options (`Causeway.events/1`'s, e.g. `store:` from
  `Causeway.open/2`, `type:`, `limit:`).

      {:ok, s} = Causeway.open("_causeway/test")
      Causeway.ExUnit.events("adds an item", store: s, type: :function_entry)
  """
  @spec events(String.t() | {module(), String.t() | atom()}, keyword()) ::
          {:ok, [Causeway.Event.t()]} | {:error, :unknown_test | :no_windows}
  def events(test, opts \\ []) do
    {dir, opts} = Keyword.pop(opts, :dir, @defaults[:dir])

    with {:ok, bin} <- File.read(windows_file(dir)),
         windows = :erlang.binary_to_term(bin, [:safe]),
         {:ok, {since, until}} <- find_window(windows, test) do
      {:ok,
       Causeway.events(Keyword.merge([limit: :infinity], opts ++ [since: since, until: until]))}
    else
      {:error, :unknown_test} = e -> e
      {:error, _} -> {:error, :no_windows}
    end
  end

  defp find_window(windows, {module, name}) do
    names = test_names(name)

    module = if is_atom(module), do: inspect(module), else: module

    case Enum.find(windows, fn {{m, n}, _} -> m == module and n in names end) do
      {_, window} -> {:ok, window}
      nil -> {:error, :unknown_test}
    end
  end

  defp find_window(windows, name) when is_binary(name) or is_atom(name) do
    names = test_names(name)

    case Enum.filter(windows, fn {{_, n}, _} -> n in names end) do
      [{_, window}] -> {:ok, window}
      _ -> {:error, :unknown_test}
    end
  end

  defp test_names(name) do
    name = to_string(name)
    [name, "test " <> name]
  end

  defp async_module?(module) do
    Keyword.get(module.__info__(:attributes), :ex_unit_async) == [true]
  rescue
    _ -> false
  end

  defp safe_flush(name) do
    Causeway.flush(name)
  catch
    _, _ -> :error
  end

  ## the summary

  @doc false
  # The text printed under a failing test: what was recorded between `since`
  # and `until` (DateTimes).
  def summary(test, since, until, async?, opts) do
    name = opts[:name]
    :ok = Causeway.flush(name)
    events = Causeway.events(since: since, until: until, limit: :infinity, instance: name)
    pad = "     "

    header =
      "#{pad}Causeway recorded #{length(events)} events while " <>
        "#{inspect(Atom.to_string(test.name))} (#{inspect(test.module)}) ran" <>
        if(async?, do: " (an async test: other tests ran beside it)", else: "")

    sections = [
      header,
      trees(events, opts, pad),
      messages(events, opts, pad),
      states(events, opts, pad),
      "#{pad}explore: {:ok, s} = Causeway.open(#{inspect(opts[:dir])}); " <>
        "Causeway.events(store: s, since: #{inspect(since)}, until: #{inspect(until)})"
    ]

    sections |> Enum.reject(&(&1 == nil)) |> Enum.join("\n")
  end

  defp trees(events, opts, pad) do
    # the calls not made by another call of the window (a callback's parent
    # is the message it handles)
    entries = Enum.filter(events, &(&1.type == :function_entry))
    calls = MapSet.new(entries, & &1.call_id)
    roots = Enum.reject(entries, &(&1.parent_id in calls))

    case roots do
      [] ->
        nil

      _ ->
        shown =
          roots
          |> Enum.take(opts[:max_trees])
          |> Enum.map(fn root ->
            case Causeway.call_tree(root.call_id,
                   max_nodes: opts[:max_lines],
                   instance: opts[:name]
                 ) do
              nil ->
                "#{pad}    #{inspect(root)}"

              tree ->
                tree
                |> Causeway.CallTree.format()
                |> String.split("\n")
                |> Enum.take(opts[:max_lines])
                |> Enum.map_join("\n", &"#{pad}    #{&1}")
            end
          end)

        more = more(length(roots), opts[:max_trees], "calls")
        Enum.join(["#{pad}  calls (#{length(roots)} top-level):" | shown] ++ more, "\n")
    end
  end

  defp messages(events, opts, pad) do
    sends = Enum.filter(events, &(&1.type in [:message_send, :message_receive]))

    case sends do
      [] ->
        nil

      _ ->
        lines =
          sends
          |> Enum.take(opts[:max_messages])
          |> Enum.map(fn
            %{type: :message_send, pid: p, data: %{to: to, message: m}} ->
              "#{pad}    #{inspect(p)} → #{inspect(to)}: #{Causeway.Event.short(m)}"

            %{type: :message_receive, pid: p, data: %{from: from, message: m}} ->
              "#{pad}    #{inspect(p)} ← #{if from, do: inspect(from), else: "?"}: #{Causeway.Event.short(m)}"

            e ->
              "#{pad}    #{inspect(e)}"
          end)

        more = more(length(sends), opts[:max_messages], "messages")
        Enum.join(["#{pad}  messages:" | lines] ++ more, "\n")
    end
  end

  defp states(events, opts, pad) do
    changes = Enum.filter(events, &(&1.type == :state_change))

    case changes do
      [] ->
        nil

      _ ->
        lines =
          changes
          |> Enum.take(-opts[:max_states])
          |> Enum.map(fn %{pid: p, data: %{old: old, new: new}} ->
            "#{pad}    #{inspect(p)}: #{Causeway.Event.short(old)} → #{Causeway.Event.short(new)}"
          end)

        Enum.join(["#{pad}  last state changes:" | lines], "\n")
    end
  end

  defp more(n, max, what) when n > max, do: ["#{"     "}    … #{n - max} more #{what}"]
  defp more(_, _, _), do: []
end
