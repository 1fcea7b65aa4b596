defmodule Causeway.Stress.CrashLoop do
  @moduledoc """
  Kill-and-reopen loop, as RocksDB's crash tests do: a child VM writes
  events with unique arguments, calls `Causeway.flush/0` and prints what it
  flushed, keeps writing, and is killed with SIGKILL at a random moment;
  the loop waits until the OS process is gone, reopens the same directory
  read-only and checks that every event any child reported as flushed is
  there (and that the store opens at all).

  Each iteration picks what the child is doing when it dies: writing
  (`:write`, with RocksDB flushing memtables and compacting in the
  background), stopping and restarting its instance in a loop (`:stop`),
  or running retention passes in a loop (`:retention`, a policy that
  deletes nothing flushed by this loop, so every flushed event must still
  be there).

      Causeway.Stress.CrashLoop.run(dir: "/tmp/crash", iterations: 30)
      #=> %{iterations: 30, losses: 0, failed_opens: 0, flushed: 41_200, ...}

  `mix causeway.stress crash --iterations N` runs it from the shell.
  """

  @modes [:write, :stop, :retention]

  @doc """
  Runs the loop. Options: `:dir` (required), `:iterations` (30), `:seed`,
  `:max_kill_ms` (most time between the first flush and the kill, 600),
  `:log` (a 1-arity function given one line per iteration).
  """
  @spec run(keyword()) :: map()
  def run(opts) do
    dir = Keyword.fetch!(opts, :dir)
    n = Keyword.get(opts, :iterations, 30)
    seed = Keyword.get(opts, :seed, :erlang.unique_integer([:positive]))
    max_kill = Keyword.get(opts, :max_kill_ms, 600)
    log = Keyword.get(opts, :log, fn _ -> :ok end)
    :rand.seed(:exsss, {seed, 1, 2})

    Enum.reduce(
      1..n//1,
      %{iterations: 0, losses: 0, failed_opens: 0, flushed: 0, modes: %{}, seed: seed},
      fn i, acc ->
        mode = Enum.random(@modes)
        kill_after = :rand.uniform(max_kill)
        {flushed_upto, exit} = child(dir, i, mode, kill_after)

        {opened, missing} = verify(dir, Map.put(acc_flushed(acc), i, flushed_upto))

        acc =
          acc
          |> Map.update!(:iterations, &(&1 + 1))
          |> Map.update!(:flushed, &(&1 + flushed_upto))
          |> Map.update!(:losses, &(&1 + missing))
          |> Map.update!(:failed_opens, &(&1 + if(opened, do: 0, else: 1)))
          |> Map.update!(:modes, &Map.update(&1, mode, 1, fn c -> c + 1 end))
          |> Map.update(:per_iteration, %{i => flushed_upto}, &Map.put(&1, i, flushed_upto))

        log.(
          "iteration #{i}: #{mode}, killed #{kill_after} ms after its first flush (#{inspect(exit)}), " <>
            "#{flushed_upto} flushed, store #{if opened, do: "opens", else: "DOES NOT OPEN"}, #{missing} missing"
        )

        acc
      end
    )
    |> Map.delete(:per_iteration)
  end

  defp acc_flushed(acc), do: Map.get(acc, :per_iteration, %{})

  # every iteration's events 1..flushed must be on disk
  defp verify(dir, expected) do
    case Causeway.open(dir, read_only: true) do
      {:ok, store} ->
        found =
          Causeway.stream_events(
            store: store,
            module: Causeway.Stress.Crash,
            type: :function_entry,
            links: false,
            page_size: 5_000
          )
          |> Enum.reduce(MapSet.new(), fn e, set ->
            case e.data do
              [iter, seq] -> MapSet.put(set, {iter, seq})
              _ -> set
            end
          end)

        Causeway.close(store)

        missing =
          Enum.sum(
            for {iter, upto} <- expected do
              Enum.count(1..upto//1, &(not MapSet.member?(found, {iter, &1})))
            end
          )

        {true, missing}

      {:error, _} ->
        {false, 0}
    end
  end

  # A child VM; returns the highest sequence number it reported flushed.
  defp child(dir, iter, mode, kill_after) do
    ebin = Path.dirname(:code.which(Causeway))
    elixir = System.find_executable("elixir") || raise "elixir is not on the PATH"

    port =
      Port.open({:spawn_executable, elixir}, [
        :binary,
        :exit_status,
        :stderr_to_stdout,
        {:line, 4096},
        args: ["-pa", ebin, "-e", script(dir, iter, mode)],
        env: [{~c"LANG", ~c"C.UTF-8"}, {~c"LC_ALL", ~c"C.UTF-8"}]
      ])

    {:os_pid, os_pid} = Port.info(port, :os_pid)

    case read(port, 0, nil, 60_000) do
      {:flushed, upto} ->
        deadline = System.monotonic_time(:millisecond) + kill_after
        upto = read_until(port, upto, deadline)
        System.cmd("kill", ["-9", Integer.to_string(os_pid)])
        upto = drain(port, upto)
        wait_gone(os_pid)
        {upto, :killed}

      {:exited, status, upto} ->
        wait_gone(os_pid)
        {upto, {:exited_by_itself, status}}
    end
  end

  # the first FLUSHED line (or the child's exit)
  defp read(port, upto, _last, timeout) do
    receive do
      {^port, {:data, {:eol, "FLUSHED " <> n}}} -> {:flushed, max(upto, String.to_integer(n))}
      {^port, {:data, _}} -> read(port, upto, nil, timeout)
      {^port, {:exit_status, s}} -> {:exited, s, upto}
    after
      timeout -> {:exited, :timeout, upto}
    end
  end

  defp read_until(port, upto, deadline) do
    left = deadline - System.monotonic_time(:millisecond)

    if left <= 0 do
      upto
    else
      receive do
        {^port, {:data, {:eol, "FLUSHED " <> n}}} ->
          read_until(port, max(upto, String.to_integer(n)), deadline)

        {^port, {:data, _}} ->
          read_until(port, upto, deadline)

        {^port, {:exit_status, _}} ->
          upto
      after
        left -> upto
      end
    end
  end

  # lines the child printed before it died still count: it had flushed them
  defp drain(port, upto) do
    receive do
      {^port, {:data, {:eol, "FLUSHED " <> n}}} -> drain(port, max(upto, String.to_integer(n)))
      {^port, {:data, _}} -> drain(port, upto)
      {^port, {:exit_status, _}} -> upto
    after
      10_000 -> upto
    end
  end

  defp wait_gone(os_pid, n \\ 300) do
    cond do
      not File.exists?("/proc/#{os_pid}") -> :ok
      n == 0 -> raise "child VM #{os_pid} did not exit"
      true -> Process.sleep(20) && wait_gone(os_pid, n - 1)
    end
  end

  # The child: sequence numbers 1, 2, ... as {iter, seq} arguments; after
  # each flush it prints the last sequence number flushed.
  defp script(dir, iter, mode) do
    """
    dir = #{inspect(dir)}
    iter = #{iter}
    mode = #{inspect(mode)}
    start = fn ->
      opts = [dir: dir, flush_interval_ms: 5]
      opts = if mode == :retention, do: opts ++ [retention: [max_age: {1, :day}, interval_ms: 100]], else: opts
      {:ok, _} = Causeway.start_link(opts)
    end
    start.()
    write = fn from, count ->
      for seq <- from..(from + count - 1) do
        id = Causeway.Runtime.function_entry(Causeway.Stress.Crash, :w, [iter, seq])
        Causeway.Runtime.function_exit(id, seq)
      end
      from + count
    end
    Stream.iterate(1, fn next ->
      next = write.(next, 500)
      :ok = Causeway.flush()
      IO.puts("FLUSHED \#{next - 1}")
      case mode do
        :stop -> :ok = Causeway.stop(); start.()
        :retention -> {:ok, _} = Causeway.enforce_retention()
        :write -> :ok
      end
      next
    end)
    |> Stream.run()
    """
  end
end
