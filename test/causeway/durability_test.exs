defmodule Causeway.DurabilityTest do
  # flush/0 is a durability barrier: an OS process killed with SIGKILL right
  # after it returned loses none of the events captured before it.
  use Causeway.Case, async: false

  @moduletag timeout: 120_000

  test "every flushed event survives a SIGKILL of the OS process" do
    dir = tmp_dir!("kill")
    ebin = Path.dirname(:code.which(Causeway))
    elixir = System.find_executable("elixir")

    script = """
    {:ok, _} = Causeway.start_link(dir: #{inspect(dir)}, flush_interval_ms: 50)
    for i <- 1..5_000 do
      id = Causeway.Runtime.function_entry(Durable, :work, [i])
      Causeway.Runtime.function_exit(id, i * 2)
    end
    :ok = Causeway.flush()
    IO.puts("FLUSHED")
    # keep capturing without flushing until we are killed
    Stream.iterate(0, &(&1 + 1)) |> Enum.each(fn i -> Causeway.Runtime.state_change(i, i + 1) end)
    """

    port =
      Port.open({:spawn_executable, elixir}, [
        :binary,
        :exit_status,
        :stderr_to_stdout,
        {:line, 4096},
        args: ["-pa", ebin, "-e", script],
        env: [{~c"LANG", ~c"C.UTF-8"}, {~c"LC_ALL", ~c"C.UTF-8"}]
      ])

    {:os_pid, os_pid} = Port.info(port, :os_pid)
    assert wait_for_line(port, "FLUSHED", 60_000) == :ok
    {_, 0} = System.cmd("kill", ["-9", Integer.to_string(os_pid)])
    assert_receive {^port, {:exit_status, 137}}, 10_000

    {:ok, store} = Causeway.open(dir, read_only: true)
    entries = Causeway.events(store: store, type: :function_entry, limit: :infinity, links: false)
    exits = Causeway.events(store: store, type: :function_exit, limit: :infinity, links: false)
    assert length(entries) == 5_000
    assert length(exits) == 5_000
    assert Enum.map(entries, &hd(&1.data)) == Enum.to_list(1..5_000)
    assert exits |> Enum.map(& &1.data) |> Enum.sort() == Enum.map(1..5_000, &(&1 * 2))
    Causeway.close(store)
  end

  test "a store written by another VM: its pids and atoms unknown here still read" do
    dir = tmp_dir!("foreign")
    ebin = Path.dirname(:code.which(Causeway))
    elixir = System.find_executable("elixir")
    u = System.unique_integer([:positive])

    # a pid of a node and an atom that only the writing VM ever knew
    script = """
    {:ok, _} = Causeway.start_link(dir: #{inspect(dir)})
    node = "ghost_#{u}@nowhere"
    pid = :erlang.binary_to_term(<<131, 88, 119, byte_size(node), node::binary, 7::32, 0::32, 1::32>>)
    tag = String.to_atom("only_there_#{u}")
    Causeway.Runtime.state_change(nil, %{owner: pid, tag: tag})
    Causeway.Runtime.state_change(:before, {pid, 1})
    :ok = Causeway.flush()
    IO.puts("FLUSHED")
    """

    {out, 0} =
      System.cmd(elixir, ["-pa", ebin, "-e", script],
        env: [{"LANG", "C.UTF-8"}, {"LC_ALL", "C.UTF-8"}],
        stderr_to_stdout: true
      )

    assert out =~ "FLUSHED"
    {:ok, store} = Causeway.open(dir)
    [a, b] = Causeway.events(store: store, type: :state_change)
    ghost = "<0.7.0>@ghost_#{u}@nowhere"
    assert a.data == %{old: nil, new: %{owner: ghost, tag: "only_there_#{u}"}}
    assert b.data == %{old: :before, new: {ghost, 1}}
    Causeway.close(store)
  end

  defp wait_for_line(port, line, timeout) do
    receive do
      {^port, {:data, {:eol, ^line}}} -> :ok
      {^port, {:data, _other}} -> wait_for_line(port, line, timeout)
      {^port, {:exit_status, s}} -> {:exited, s}
    after
      timeout -> :timeout
    end
  end
end
