defmodule Causeway.TracerTest do
  use Causeway.Case, async: false

  defmodule PlainServer do
    # an ordinary GenServer: no Causeway.Instrument
    use GenServer
    def start_link(n), do: GenServer.start_link(__MODULE__, n)
    @impl true
    def init(n), do: {:ok, n}
    @impl true
    def handle_call({:add, k}, _from, n), do: {:reply, n + k, n + k}
  end

  defmodule PlainMath do
    def divide(a, b), do: div(a, b)
  end

  setup do
    start_causeway!()
    :ok
  end

  defp wait_stopped(session) do
    ref = Process.monitor(session.pid)
    assert_receive {:DOWN, ^ref, :process, _, _}, 5_000
  end

  import Bitwise

  defp assert_clean(pids, mfas) do
    for pid <- pids,
        Process.alive?(pid),
        do: assert(:erlang.trace_info(pid, :flags) == {:flags, []})

    for mfa <- mfas, do: assert(:erlang.trace_info(mfa, :traced) == {:traced, false})
  end

  test "an unmodified OTP module's calls and returns are stored and linked; results unchanged" do
    untraced = {:lists.reverse([1, 2, 3]), :lists.seq(1, 5)}

    {:ok, s} =
      Causeway.trace(self(),
        what: [:call, :return],
        functions: [{:lists, :reverse, 1}, {:lists, :seq, 2}]
      )

    traced = {:lists.reverse([1, 2, 3]), :lists.seq(1, 5)}
    Causeway.stop_trace(s)
    assert traced == untraced
    flush!()

    events = Causeway.events(pid: self(), limit: :infinity)
    assert Enum.all?(events, &(&1.source == :tracer))

    [entry] =
      Enum.filter(
        events,
        &(&1.type == :function_entry and &1.function == :reverse and &1.data == [[1, 2, 3]])
      )

    assert entry.module == :lists and entry.arity == 1
    [exit] = Causeway.events(call_id: entry.call_id, type: :function_exit)
    assert exit.data == [3, 2, 1]
    assert {:completes, entry.id} in exit.links
    assert {:completed_by, exit.id} in entry.links

    assert Enum.any?(
             events,
             &(&1.function == :seq and &1.type == :function_exit and &1.data == [1, 2, 3, 4, 5])
           )

    assert_clean([self()], [{:lists, :reverse, 1}, {:lists, :seq, 2}])
  end

  test "exceptions are recorded and re-raised unchanged" do
    {:ok, s} = Causeway.trace({PlainMath, :divide, 2})
    assert_raise ArithmeticError, fn -> PlainMath.divide(1, 0) end
    assert PlainMath.divide(12, 4) == 3
    Causeway.stop_trace(s)
    flush!()
    exits = Causeway.events(pid: self(), type: :function_exit, module: PlainMath)
    assert [%{data: {:exception, :error, :badarith}}, %{data: 3}] = exits
  end

  test "a plain GenServer traced with calls, returns, sends and receives: its message flow is queryable" do
    {:ok, server} = PlainServer.start_link(1)

    {:ok, s} =
      Causeway.trace([self(), server],
        what: [:call, :return, :send, :receive],
        functions: [PlainServer]
      )

    assert GenServer.call(server, {:add, 2}) == 3
    Causeway.stop_trace(s)
    flush!()

    [flow | _] = Causeway.message_flow(self(), server)
    assert {:"$gen_call", {me, _}, {:add, 2}} = flow.send.data.message
    assert me == self()
    assert flow.receive.pid == server
    [call] = Causeway.events(pid: server, type: :function_entry, function: :handle_call)
    assert [{:add, 2}, _, 1] = call.data
    # the callback was caused by the message it handles
    assert call.parent_id == flow.receive.id
    [ret] = Causeway.events(call_id: call.call_id, type: :function_exit)
    assert ret.data == {:reply, 3, 3}
    assert_clean([self(), server], [{PlainServer, :handle_call, 3}, {PlainServer, :init, 1}])
  end

  test "max_events trips at the exact count and cleans up" do
    {:ok, s} =
      Causeway.trace(self(),
        what: [:call, :return],
        functions: [{:lists, :reverse, 1}],
        max_events: 10
      )

    for i <- 1..50, do: :lists.reverse([i])
    assert_receive {:causeway_trace, _, {:stopped, :max_events}}, 5_000
    wait_stopped(s)
    flush!()

    traced =
      Causeway.events(pid: self(), limit: :infinity) |> Enum.filter(&(&1.source == :tracer))

    assert length(traced) == 10
    assert Causeway.trace_info(s) == %{running: false}
    assert_clean([self()], [{:lists, :reverse, 1}])
  end

  test "max_rate and duration_ms trip too, each saying why" do
    {:ok, s} =
      Causeway.trace(self(), what: [:call], functions: [{:lists, :reverse, 1}], max_rate: 5)

    for i <- 1..20, do: :lists.reverse([i])
    assert_receive {:causeway_trace, _, {:stopped, :max_rate}}, 5_000
    wait_stopped(s)
    assert_clean([self()], [{:lists, :reverse, 1}])

    {:ok, s} =
      Causeway.trace(self(), what: [:call], functions: [{:lists, :reverse, 1}], duration_ms: 100)

    assert_receive {:causeway_trace, _, {:stopped, :duration_ms}}, 5_000
    wait_stopped(s)
    assert_clean([self()], [{:lists, :reverse, 1}])
  end

  test "max_msg_bytes bounds every captured term" do
    {:ok, s} =
      Causeway.trace(self(), what: [:call], functions: [{:lists, :reverse, 1}], max_msg_bytes: 128)

    :lists.reverse([:binary.copy("x", 10_000)])
    Causeway.stop_trace(s)
    flush!()
    [e] = Causeway.events(pid: self(), type: :function_entry, function: :reverse)
    assert e.data == [[{:truncated, 10_000}]]
  end

  test "the owner dying or the instance stopping ends the session and removes its flags" do
    parent = self()
    victim = spawn(fn -> Process.sleep(:infinity) end)

    owner =
      spawn(fn ->
        {:ok, s} = Causeway.trace(victim, what: [:send, :receive, :procs])
        send(parent, {:session, s})
        receive do: (:die -> :ok)
      end)

    assert_receive {:session, s}, 5_000
    assert {:flags, flags} = :erlang.trace_info(victim, :flags)
    assert :send in flags
    send(owner, :die)
    wait_stopped(s)
    assert_clean([victim], [])

    {:ok, s2} = Causeway.trace(victim, what: [:send])
    assert {:flags, [_ | _]} = :erlang.trace_info(victim, :flags)
    stop_causeway!()
    wait_stopped(s2)
    assert_clean([victim], [])
  end

  test "calls traced without their returns are not stacked on each other" do
    {:ok, s} = Causeway.trace(self(), what: [:call], functions: [{:lists, :reverse, 1}])
    for i <- 1..3, do: :lists.reverse([i])
    Causeway.stop_trace(s)
    flush!()
    calls = Causeway.events(pid: self(), type: :function_entry, function: :reverse)
    assert length(calls) == 3
    assert Enum.all?(calls, &(&1.parent_id == nil))
  end

  test "bad targets and missing modules are clear errors" do
    assert_raise ArgumentError, ~r/not available/, fn -> Causeway.trace(No.Such.Module) end
    assert_raise ArgumentError, ~r/trace target/, fn -> Causeway.trace("x") end

    assert_raise ArgumentError, ~r/unknown :what/, fn ->
      Causeway.trace(self(), what: [:everything])
    end

    assert_raise ArgumentError, ~r/needs functions/, fn ->
      Causeway.trace(self(), what: [:call])
    end

    assert_raise ArgumentError, ~r/max_events/, fn -> Causeway.trace(self(), max_events: 0) end

    # refused before any flag or pattern is set
    assert_raise ArgumentError, ~r/duration_ms must be an integer in 1..4294967295/, fn ->
      Causeway.trace(self(),
        what: [:call, :return],
        functions: [{:lists, :reverse, 1}],
        duration_ms: 1 <<< 40
      )
    end

    assert_clean([self()], [{:lists, :reverse, 1}])
    assert {:error, %Causeway.Error{kind: :not_found}} = Causeway.trace({:lists, :no_such_fun, 9})
  end
end
