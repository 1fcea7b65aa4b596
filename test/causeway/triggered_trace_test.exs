defmodule Causeway.TriggeredTraceTest do
  # trace patterns (and the send trace pattern a triggered session sets) are
  # global to the VM: not async
  use Causeway.Case, async: false

  # A small shop, none of it instrumented: a request handler that routes
  # requests and, on checkout only, calls a worker GenServer, which starts a
  # task that records the order in a ledger and tells an audit process.

  defmodule Api do
    def route(path), do: {:routed, path}
    def checkout(order, worker), do: GenServer.call(worker, {:charge, order})
  end

  defmodule Ledger do
    def record(order), do: {:recorded, order}
  end

  defmodule Handler do
    use GenServer
    def start_link(worker), do: GenServer.start_link(__MODULE__, worker)
    @impl true
    def init(worker), do: {:ok, worker}
    @impl true
    def handle_call({:request, "/checkout", order}, _from, worker),
      do: {:reply, Api.checkout(order, worker), worker}

    def handle_call({:request, path, _}, _from, worker) do
      # not the trigger: a route, and a message to the worker too
      GenServer.cast(worker, {:seen, path})
      {:reply, Api.route(path), worker}
    end
  end

  defmodule Worker do
    use GenServer
    def start_link(audit), do: GenServer.start_link(__MODULE__, audit)
    @impl true
    def init(audit), do: {:ok, %{audit: audit, seen: 0}}
    @impl true
    def handle_call({:charge, order}, _from, st) do
      audit = st.audit

      {:ok, task} =
        Task.start(fn ->
          send(audit, {:ledger, Ledger.record(order)})
        end)

      {:reply, {:charged, order, task}, st}
    end

    @impl true
    def handle_cast({:seen, _}, st), do: {:noreply, %{st | seen: st.seen + 1}}
  end

  defp audit_process(parent) do
    spawn(fn ->
      receive do
        {:ledger, entry} ->
          # the audit process is 3 hops from the trigger
          Ledger.record({:audited, entry})
          send(parent, {:audited, entry})
      end
    end)
  end

  setup do
    start_causeway!()
    for m <- [Api, Ledger, Handler, Worker, Task, Task.Supervised], do: Code.ensure_loaded!(m)
    :ok
  end

  defp shop do
    audit = audit_process(self())
    {:ok, worker} = Worker.start_link(audit)
    {:ok, handler} = Handler.start_link(worker)
    %{audit: audit, worker: worker, handler: handler}
  end

  defp start_triggered!(opts \\ []) do
    {:ok, s} =
      Causeway.trace(
        :all,
        Keyword.merge(
          [
            start_on: {:call, {Api, :checkout, 2}},
            functions: [Api, Ledger, Worker, Handler],
            what: [:call, :return, :send, :receive, :procs],
            follow_ms: 2_000
          ],
          opts
        )
      )

    s
  end

  defp tracer_events(pid),
    do: Causeway.events(pid: pid, limit: :infinity) |> Enum.filter(&(&1.source == :tracer))

  defp wait_stopped(session) do
    ref = Process.monitor(session.pid)
    assert_receive {:DOWN, ^ref, :process, _, _}, 10_000
  end

  test "nothing is recorded before the trigger; then the trigger process and what it reaches within max_hops are, and the session ends after follow_ms" do
    %{audit: audit, worker: worker, handler: handler} = shop()
    s = start_triggered!(max_hops: 2)

    # before the trigger: calls of traced functions and messages, none recorded
    assert GenServer.call(handler, {:request, "/home", nil}) == {:routed, "/home"}
    assert %{triggered: false, followed: [], events: 0} = Causeway.trace_info(s)

    # the trigger: results are those of the plain code
    assert {:charged, 42, task} = GenServer.call(handler, {:request, "/checkout", 42})
    assert_receive {:causeway_trace, _, {:triggered, ^handler}}, 5_000
    assert_receive {:audited, {:recorded, 42}}, 5_000

    # a second checkout does not fire again
    assert {:charged, 43, _} = GenServer.call(handler, {:request, "/checkout", 43})

    info = Causeway.trace_info(s)
    assert info.triggered and info.trigger_pid == handler
    assert {handler, 0} in info.followed
    assert {worker, 1} in info.followed
    assert {task, 2} in info.followed
    refute Enum.any?(info.followed, fn {pid, _} -> pid == audit end)
    assert info.beyond_hops >= 1
    assert info.processes == length(info.followed)

    assert_receive {:causeway_trace, _, {:stopped, :follow_ms}}, 10_000
    wait_stopped(s)
    flush!()

    # the handler: the trigger call first, nothing of the "/home" request
    [first | _] = h_events = tracer_events(handler)
    assert first.type == :function_entry and first.module == Api and first.function == :checkout
    assert first.data == [42, worker]
    refute Enum.any?(h_events, &(&1.function == :route))

    refute Enum.any?(
             h_events,
             &match?(%{type: :message_send, data: %{message: {:"$gen_cast", _}}}, &1)
           )

    assert Enum.any?(
             h_events,
             &(&1.type == :function_exit and &1.function == :checkout and
                 match?({:charged, 42, _}, &1.data))
           )

    # the worker (1 hop): the charge it received and handled, the task it spawned
    w_events = tracer_events(worker)
    refute Enum.any?(w_events, &match?(%{data: [{:seen, _}, _]}, &1))

    [charge] =
      Enum.filter(
        w_events,
        &(&1.type == :function_entry and &1.function == :handle_call and
            match?([{:charge, 42}, _, _], &1.data))
      )

    assert Enum.any?(w_events, &(&1.type == :process_spawn))

    # the message flow from the handler to the worker is queryable
    assert [_ | _] = flows = Causeway.message_flow(handler, worker)

    assert Enum.any?(
             flows,
             &match?(%{send: %{data: %{message: {:"$gen_call", _, {:charge, 42}}}}}, &1)
           )

    # the task (2 hops): its ledger call; and the causal chain of the
    # worker's callback leads back to the handler's send...
    t_events = tracer_events(task)

    assert Enum.any?(
             t_events,
             &(&1.type == :function_entry and &1.module == Ledger and &1.data == [42])
           )

    chain = Causeway.causal_chain(charge.id)
    assert Enum.any?(chain, fn {e, _link} -> e.pid == handler and e.type == :message_send end)
    # ... and back to the call that fired the trigger
    assert {root, _} = List.last(chain)
    assert root.id == first.id

    # the audit process (3 hops) is not recorded
    assert tracer_events(audit) == []

    # the session cleaned up: no flags, no trigger, the send pattern restored
    for pid <- [handler, worker], do: assert(:erlang.trace_info(pid, :flags) == {:flags, []})
    assert :erlang.trace_info({Api, :checkout, 2}, :meta) == {:meta, false}
    assert :erlang.trace_info(:send, :match_spec) == {:match_spec, true}

    # and after it, nothing more is recorded
    before = length(tracer_events(handler))
    assert {:charged, 44, _} = GenServer.call(handler, {:request, "/checkout", 44})
    flush!()
    assert length(tracer_events(handler)) == before
  end

  test "max_hops: 0 follows only the triggering process; args: picks the call that fires" do
    %{worker: worker, handler: handler} = shop()
    s = start_triggered!(max_hops: 0, start_on: {:call, {Api, :checkout, 2}, args: [7, :_]})

    assert {:charged, 6, _} = GenServer.call(handler, {:request, "/checkout", 6})
    refute_received {:causeway_trace, _, {:triggered, _}}
    assert %{triggered: false} = Causeway.trace_info(s)

    assert {:charged, 7, _} = GenServer.call(handler, {:request, "/checkout", 7})
    assert_receive {:causeway_trace, _, {:triggered, ^handler}}, 5_000
    info = Causeway.trace_info(s)
    assert info.followed == [{handler, 0}]
    assert info.beyond_hops >= 1
    Causeway.stop_trace(s)
    flush!()

    assert [%{function: :checkout, data: [7, ^worker]} | _] = tracer_events(handler)
    assert tracer_events(worker) == []
  end

  test "max_followed caps the followed processes and counts those refused" do
    parent = self()
    n = 5

    fan_out = fn ->
      receive do
        :go ->
          Api.route(:fan_out)
          for _ <- 1..n, do: spawn(fn -> receive do: (:stop -> :ok) end)
          send(parent, :spawned)
      end
    end

    root = spawn(fan_out)
    s = start_triggered!(start_on: {:call, {Api, :route, 1}}, max_followed: 3, max_hops: 1)
    send(root, :go)
    assert_receive :spawned, 5_000
    info = Causeway.trace_info(s)
    assert length(info.followed) == 3
    assert info.refused == n - 2
    Causeway.stop_trace(s)
  end

  test "sends and spawns are followed even when :what does not record them" do
    %{worker: worker, handler: handler} = shop()
    s = start_triggered!(what: [:call, :return])
    assert {:charged, 1, task} = GenServer.call(handler, {:request, "/checkout", 1})
    assert_receive {:audited, _}, 5_000
    info = Causeway.trace_info(s)
    assert {worker, 1} in info.followed and {task, 2} in info.followed
    Causeway.stop_trace(s)
    flush!()

    events = Enum.flat_map([handler, worker, task], &tracer_events/1)
    assert Enum.any?(events, &(&1.pid == task and &1.module == Ledger))
    assert Enum.all?(events, &(&1.type in [:function_entry, :function_exit]))
  end

  test "a manual trigger follows the process it is fired for" do
    %{worker: worker, handler: handler} = shop()
    s = start_triggered!(start_on: :manual)
    assert GenServer.call(handler, {:request, "/home", nil}) == {:routed, "/home"}
    assert :ok = Causeway.fire_trace(s, handler)
    assert {:error, :already_fired} = Causeway.fire_trace(s, worker)
    assert_receive {:causeway_trace, _, {:triggered, ^handler}}, 5_000
    assert GenServer.call(handler, {:request, "/about", nil}) == {:routed, "/about"}
    Causeway.stop_trace(s)
    flush!()

    routes =
      Enum.filter(tracer_events(handler), &(&1.function == :route and &1.type == :function_entry))

    assert [%{data: ["/about"]}] = routes
  end

  test "a telemetry trigger needs :telemetry; with it, the first matching event's process is followed" do
    refute Code.ensure_loaded?(:telemetry)

    assert_raise ArgumentError, ~r/needs the :telemetry application/, fn ->
      Causeway.trace(:all, start_on: {:telemetry, [:shop, :checkout]})
    end

    Causeway.Test.FakeTelemetry.install()

    try do
      %{handler: handler} = shop()
      emit = fn pid, vip -> send(pid, {:emit, vip}) end

      emitter = fn ->
        receive do
          {:emit, vip} -> apply(:telemetry, :execute, [[:shop, :checkout], %{n: 1}, %{vip: vip}])
        end

        receive do
          {:emit, vip} -> apply(:telemetry, :execute, [[:shop, :checkout], %{n: 1}, %{vip: vip}])
        end

        GenServer.call(handler, {:request, "/home", nil})
        Process.sleep(:infinity)
      end

      pid = spawn(emitter)

      s =
        start_triggered!(
          start_on: {:telemetry, [:shop, :checkout], filter: fn _, md -> md.vip == true end}
        )

      emit.(pid, false)
      emit.(pid, true)
      assert_receive {:causeway_trace, _, {:triggered, ^pid}}, 5_000
      info = Causeway.trace_info(s)
      assert {pid, 0} in info.followed
      Causeway.stop_trace(s)
      Process.exit(pid, :kill)
    after
      Causeway.Test.FakeTelemetry.uninstall()
    end
  end

  test "bad options are ArgumentErrors naming the option; one triggered session at a time" do
    trigger = {:call, {Api, :checkout, 2}}

    assert_raise ArgumentError, ~r/:start_on must be/, fn ->
      Causeway.trace(:all, start_on: :bogus)
    end

    assert_raise ArgumentError, ~r/not available/, fn ->
      Causeway.trace(:all, start_on: {:call, {No.Such.Module, :f, 1}})
    end

    assert_raise ArgumentError, ~r/:max_hops must be an integer in 0..1000/, fn ->
      Causeway.trace(:all, start_on: trigger, max_hops: -1)
    end

    assert_raise ArgumentError, ~r/:max_followed must be an integer/, fn ->
      Causeway.trace(:all, start_on: trigger, max_followed: 0)
    end

    assert_raise ArgumentError, ~r/:follow_ms must be an integer/, fn ->
      Causeway.trace(:all, start_on: trigger, follow_ms: :soon)
    end

    assert_raise ArgumentError, ~r/:max_hops is an option of :start_on sessions only/, fn ->
      Causeway.trace(Api, max_hops: 2)
    end

    assert_raise ArgumentError, ~r/with :start_on/, fn ->
      Causeway.trace(self(), start_on: trigger)
    end

    assert_raise ArgumentError, ~r/args: must be a list pattern/, fn ->
      Causeway.trace(:all, start_on: {:call, {Api, :checkout, 2}, args: :x})
    end

    assert_raise ArgumentError, ~r/unknown option :foo/, fn ->
      Causeway.trace(:all, start_on: {:call, {Api, :checkout, 2}, foo: 1})
    end

    assert_raise ArgumentError, ~r/event name/, fn ->
      Causeway.trace(:all, start_on: {:telemetry, "shop.checkout"})
    end

    assert {:error, %Causeway.Error{kind: :not_found}} =
             Causeway.trace(:all, start_on: {:call, {Api, :no_such, 9}})

    # nothing of the refused sessions stayed behind
    assert :erlang.trace_info(:send, :match_spec) == {:match_spec, true}
    assert :erlang.trace_info({Api, :checkout, 2}, :meta) == {:meta, false}

    s = start_triggered!()
    assert {:error, %Causeway.Error{kind: :busy}} = Causeway.trace(:all, start_on: :manual)
    Causeway.stop_trace(s)
    wait_stopped(s)
    s2 = start_triggered!(start_on: :manual)
    Causeway.stop_trace(s2)
  end
end
