defmodule Causeway.ChildVM do
  @moduledoc false
  # A child BEAM for tests whose subject may crash or hang the VM: an OTP
  # `:peer` connected over its standard I/O (no distribution, no epmd), with
  # this VM's code path and the :causeway application started. If the child
  # dies (a native abort, a halt), calls into it fail with its exit reason
  # instead of taking the test VM down.

  @doc "Starts a child VM; returns its `:peer` pid."
  def start! do
    args = Enum.flat_map(:code.get_path(), fn p -> [~c"-pa", p] end)

    peer =
      case :peer.start(%{connection: :standard_io, args: args, wait_boot: 60_000}) do
        {:ok, peer, _node} -> peer
        {:ok, peer} -> peer
      end

    {:ok, _} = :peer.call(peer, Application, :ensure_all_started, [:causeway], 60_000)
    peer
  end

  @doc "Calls `m.f(args)` in the child; `{:ok, result}` or `{:crashed, reason}`."
  def call(peer, m, f, args, timeout \\ 120_000) do
    {:ok, :peer.call(peer, m, f, args, timeout)}
  catch
    kind, reason -> {:crashed, {kind, reason}}
  end

  @doc """
  Stops the child VM normally (init:stop, as at the end of a script) and
  waits until its OS process is gone (so its files and locks are released).
  """
  def stop(peer) do
    os_pid =
      case call(peer, :os, :getpid, [], 10_000) do
        {:ok, p} -> p
        _ -> nil
      end

    try do
      case call(peer, :init, :stop, [], 10_000) do
        _ -> :ok
      end

      :peer.stop(peer)
    catch
      _, _ -> :ok
    end

    if os_pid, do: wait_gone(os_pid, 600)
    :ok
  end

  defp wait_gone(_os_pid, 0), do: raise("the child VM did not exit in 60 s")

  defp wait_gone(os_pid, n) do
    if File.exists?("/proc/#{os_pid}") do
      Process.sleep(100)
      wait_gone(os_pid, n - 1)
    else
      :ok
    end
  end
end

defmodule Causeway.ClusterHelper do
  @moduledoc false
  # Real nodes for cluster tests: epmd started when it is not running, this
  # VM made a distributed node, peers started with :peer over distribution
  # with this VM's code path, each with its own Causeway instance.

  @doc "Makes this VM a distributed node (starting epmd first if needed)."
  def distribute! do
    unless Node.alive?() do
      epmd = System.find_executable("epmd") || Path.join(:code.root_dir(), "bin/epmd")
      System.cmd(epmd, ["-daemon"])
      start_node(20)
    end

    :ok
  end

  defp start_node(0), do: raise("could not start distribution (is epmd running?)")

  defp start_node(n) do
    case Node.start(:"causeway_test_#{System.unique_integer([:positive])}@127.0.0.1", :longnames) do
      {:ok, _} ->
        :ok

      {:error, _} ->
        Process.sleep(100)
        start_node(n - 1)
    end
  end

  @doc """
  Starts a peer node with the :causeway application and an instance on
  `dir`. Options: `exact_name: true` names the node `name` itself (to
  start it again as the same node), `tcp_control: true` controls it over
  a TCP connection instead of distribution (so it outlives a
  `Node.disconnect/1`).
  """
  def peer!(name, dir, opts \\ []) do
    args = Enum.flat_map(:code.get_path(), fn p -> [~c"-pa", p] end)
    name = if opts[:exact_name], do: name, else: :"#{name}_#{System.unique_integer([:positive])}"

    {:ok, peer, node} =
      :peer.start(
        Map.merge(
          %{name: name, host: ~c"127.0.0.1", longnames: true, args: args, wait_boot: 60_000},
          if(opts[:tcp_control], do: %{connection: 0}, else: %{})
        )
      )

    # controlled over TCP, the peer is not connected by distribution yet
    true = Node.connect(node)

    {:ok, _} = :erpc.call(node, Application, :ensure_all_started, [:causeway], 60_000)
    :ok = :erpc.call(node, __MODULE__, :start_instance, [dir], 60_000)
    {peer, node}
  end

  @doc "Stops a peer (already gone is fine)."
  def stop(peer) do
    :peer.stop(peer)
  catch
    _, _ -> :ok
  end

  @doc false
  # On the peer: an instance owned by a process that lives on.
  def start_instance(dir) do
    me = self()

    spawn(fn ->
      {:ok, _} = Causeway.start_link(dir: dir)
      send(me, :started)
      receive do: (:never -> :ok)
    end)

    receive do
      :started -> :ok
    after
      30_000 -> {:error, :timeout}
    end
  end

  @doc false
  # On any node: spawns a process, records the spawn, flushes.
  def spawn_recorded do
    grandchild = spawn(fn -> :ok end)
    Causeway.Runtime.process_spawn(grandchild)
    :ok = Causeway.flush()
  end

  @doc false
  # On any node: a Counter GenServer (instrumented) that outlives the caller.
  def counter(n) do
    {:ok, pid} = Causeway.ClusterHelper.Counter.start(n)
    pid
  end

  @doc false
  # On any node: a process that calls `server` with each of `requests`
  # inside a recorded Client.call/1, recording each request's send; flushed.
  # Returns the client's pid.
  def call_recorded(server, requests) do
    recorded_in_process(fn ->
      for req <- requests do
        id = Causeway.Runtime.function_entry(Client, :call, [req])
        Causeway.Runtime.message_send(server, req)
        r = GenServer.call(server, req)
        Causeway.Runtime.function_exit(id, r)
      end
    end)
  end

  @doc false
  # On any node: inside a recorded Parent.start/0, spawns on `node` a
  # process that records a call of Child.run/0, and records the spawn.
  # Returns {parent, child}.
  def remote_spawn(node) do
    me = self()

    {pid, ref} =
      spawn_monitor(fn ->
        id = Causeway.Runtime.function_entry(Parent, :start, [])
        child = Node.spawn(node, __MODULE__, :child_run, [self()])
        Causeway.Runtime.process_spawn(child)
        Causeway.Runtime.function_exit(id, :ok)
        send(child, :go)
        receive do: (:done -> send(me, {:child, child}))
      end)

    receive do
      {:DOWN, ^ref, _, _, _} -> :ok
    end

    :ok = Causeway.flush()

    receive do
      {:child, child} -> {pid, child}
    after
      0 -> raise "no child"
    end
  end

  @doc false
  def child_run(parent) do
    receive do: (:go -> :ok)
    id = Causeway.Runtime.function_entry(Child, :run, [])
    Causeway.Runtime.function_exit(id, :ok)
    :ok = Causeway.flush()
    send(parent, :done)
  end

  @doc false
  # On any node: a Counter registered as `name`.
  def named_counter(name, n) do
    {:ok, pid} = GenServer.start(Causeway.ClusterHelper.Counter, n, name: name)
    pid
  end

  @doc false
  # On any node: runs `fun` in a new process traced with `what` (from a
  # recorded Sender.run/0 call), waits for it to end, flushes; returns its
  # pid.
  def traced(what, fun) do
    me = self()

    {pid, ref} =
      spawn_monitor(fn ->
        receive do: (:go -> :ok)
        id = Causeway.Runtime.function_entry(Sender, :run, [])
        result = fun.()
        Causeway.Runtime.function_exit(id, :ok)
        send(me, {:traced, self(), result})
      end)

    {:ok, t} = Causeway.trace(pid, what: what)
    send(pid, :go)

    receive do
      {:DOWN, ^ref, _, _, _} -> :ok
    end

    :ok = Causeway.stop_trace(t)
    :ok = Causeway.flush()

    receive do
      {:traced, ^pid, result} -> {pid, result}
    after
      0 -> raise "the traced process did not finish"
    end
  end

  @doc false
  # On any node: traced_send of `messages` to `to`, one by one, `gap_ms`
  # apart (the sends traced); returns the sender's pid.
  def traced_sends(to, messages, gap_ms) do
    {pid, _} =
      traced([:send], fn ->
        for m <- messages do
          send(to, m)
          Process.sleep(gap_ms)
        end
      end)

    pid
  end

  @doc false
  # On any node: a process whose receives are traced (recorded without
  # their sender) and that takes `n` messages, then ends; the trace is
  # owned by a process that lives until then.
  def traced_receiver(n) do
    me = self()

    spawn(fn ->
      r = spawn(fn -> for _ <- 1..n, do: receive(do: (_ -> :ok)) end)
      {:ok, t} = Causeway.trace(r, what: [:receive])
      ref = Process.monitor(r)
      send(me, {:receiver, r})
      receive do: ({:DOWN, ^ref, _, _, _} -> :ok)
      Causeway.stop_trace(t)
    end)

    receive do
      {:receiver, r} -> r
    after
      30_000 -> raise "no receiver"
    end
  end

  @doc false
  # On any node: records a call of Child.run/0 in this process (an :erpc
  # worker when called over :erpc), flushes; returns this process's pid.
  def erpc_child do
    id = Causeway.Runtime.function_entry(Child, :run, [])
    Causeway.Runtime.function_exit(id, :ok)
    :ok = Causeway.flush()
    self()
  end

  @doc false
  # On any node: a process that records each message it receives (with the
  # sender it is told) and acknowledges it.
  def receiver do
    spawn(fn -> receive_loop() end)
  end

  defp receive_loop do
    receive do
      {:msg, from, m} ->
        Causeway.Runtime.message_receive(from, m)
        send(from, {:ack, m})
        receive_loop()
    end
  end

  @doc false
  # On any node: `n` calls of tag.work/1 recorded by a new process, flushed;
  # returns that process's pid.
  def record(tag, n) do
    recorded_in_process(fn ->
      for i <- 1..n do
        id = Causeway.Runtime.function_entry(tag, :work, [i])
        Causeway.Runtime.function_exit(id, i)
      end
    end)
  end

  # Runs `fun` in a process of its own, waits for it to end, flushes what
  # it recorded; returns its pid.
  defp recorded_in_process(fun) do
    {pid, ref} = spawn_monitor(fun)

    receive do
      {:DOWN, ^ref, _, _, _} -> :ok
    end

    :ok = Causeway.flush()
    pid
  end
end
