defmodule Causeway.InstrumentTest do
  use Causeway.Case, async: false

  defmodule Plain do
    def add(a, b), do: a + b
    def classify(x) when is_integer(x) and x > 0, do: :positive
    def classify(x) when is_integer(x), do: :non_positive
    def classify(_), do: :other
    def greet(name, greeting \\ "hello"), do: "#{greeting} #{name}"
    def boom(x), do: raise(ArgumentError, "bad #{x}")
    def toss(x), do: throw({:tossed, x})
    def leave(x), do: exit({:left, x})
    def divide(a, b), do: a / b
    def sum([]), do: 0
    def sum([h | t]), do: h + sum(t)

    def rescuing(x) do
      String.to_integer(x)
    rescue
      ArgumentError -> :not_a_number
    end
  end

  defmodule Traced do
    use Causeway.Instrument
    def add(a, b), do: a + b
    def classify(x) when is_integer(x) and x > 0, do: :positive
    def classify(x) when is_integer(x), do: :non_positive
    def classify(_), do: :other
    def greet(name, greeting \\ "hello"), do: "#{greeting} #{name}"
    def boom(x), do: raise(ArgumentError, "bad #{x}")
    def toss(x), do: throw({:tossed, x})
    def leave(x), do: exit({:left, x})
    def divide(a, b), do: a / b
    def sum([]), do: 0
    def sum([h | t]), do: h + sum(t)

    def rescuing(x) do
      String.to_integer(x)
    rescue
      ArgumentError -> :not_a_number
    end

    def outer(x), do: middle(x) + 1
    def middle(x), do: inner(x) * 2
    def inner(x), do: x + 1
    defp private_helper(x), do: x
    def uses_private(x), do: private_helper(x)
  end

  defmodule Tagged do
    use Causeway.Instrument, only: :tagged

    @trace true
    def traced(x), do: untraced(x) + 1

    def untraced(x), do: x * 2
  end

  defmodule Counter do
    use GenServer
    use Causeway.Instrument

    def start_link(n), do: GenServer.start_link(__MODULE__, n)

    @impl true
    def init(n), do: {:ok, %{count: n}}

    @impl true
    def handle_call(:get, _from, s), do: {:reply, s.count, s}
    def handle_call({:add, k}, _from, s), do: {:reply, :ok, %{s | count: s.count + k}}

    @impl true
    def handle_cast(:reset, s), do: {:noreply, %{s | count: 0}}

    @impl true
    def handle_info(:noop, s), do: {:noreply, s}
  end

  defp outcome(fun) do
    {:ok, fun.()}
  catch
    kind, reason -> {kind, reason, hd(__STACKTRACE__)}
  end

  setup do
    start_causeway!()
    :ok
  end

  test "results and exceptions are identical to the uninstrumented module's" do
    cases = [
      {:add, [1, 2]},
      {:classify, [5]},
      {:classify, [-5]},
      {:classify, ["x"]},
      {:greet, ["ada"]},
      {:greet, ["ada", "hi"]},
      {:boom, [1]},
      {:toss, [2]},
      {:leave, [3]},
      {:divide, [1, 0]},
      {:sum, [[1, 2, 3]]},
      {:rescuing, ["12"]},
      {:rescuing, ["x"]}
    ]

    for {f, args} <- cases do
      plain = outcome(fn -> apply(Plain, f, args) end)
      traced = outcome(fn -> apply(Traced, f, args) end)

      case {plain, traced} do
        {{:ok, a}, {:ok, b}} ->
          assert a == b, "#{f}#{inspect(args)}"

        {{k1, r1, {_m1, f1, a1, _}}, {k2, r2, {_m2, f2, a2, _}}} ->
          assert {k1, r1} == {k2, r2}, "#{f}#{inspect(args)}"
          # the stacktrace's top frame is the same function (in its own module)
          assert {f1, a1} == {f2, a2},
                 "#{f}#{inspect(args)}: #{inspect({f1, a1})} vs #{inspect({f2, a2})}"
      end
    end

    # an exception is recorded on the exit and the frame is closed
    catch_error(Traced.boom(7))
    flush!()
    [_boom1, exit] = Causeway.events(pid: self(), type: :function_exit, function: :boom)
    assert {:exception, :error, %ArgumentError{message: "bad 7"}} = exit.data
    assert Causeway.metrics().open_calls == 0
  end

  test "nested calls carry the right parent" do
    assert Traced.outer(1) == 5
    flush!()
    entries = Causeway.events(pid: self(), type: :function_entry)
    [outer, middle, inner] = entries
    assert {outer.function, middle.function, inner.function} == {:outer, :middle, :inner}
    assert outer.parent_id == nil
    assert middle.parent_id == outer.call_id
    assert inner.parent_id == middle.call_id
    assert {:called_from, outer.id} in middle.links
    assert {:calls, middle.id} in outer.links

    tree = Causeway.call_tree(outer.call_id)
    assert tree.result == 5

    assert [
             %{
               entry: %{function: :middle},
               result: 4,
               children: [%{entry: %{function: :inner}, result: 2}]
             }
           ] = tree.children

    assert tree.duration_ns >= 0
    assert Causeway.CallTree.format(tree) =~ "inner(1) → 2"
  end

  test "private functions are not wrapped; only: :tagged wraps only @trace functions" do
    assert Traced.uses_private(3) == 3
    assert Tagged.traced(2) == 5
    flush!()
    names = Causeway.events(pid: self(), type: :function_entry) |> Enum.map(& &1.function)
    assert names == [:uses_private, :traced]
  end

  test "a GenServer's state changes are stored with the message that caused them" do
    {:ok, pid} = Counter.start_link(1)
    :ok = GenServer.call(pid, {:add, 2})
    assert GenServer.call(pid, :get) == 3
    GenServer.cast(pid, :reset)
    send(pid, :noop)
    assert GenServer.call(pid, :get) == 0
    flush!()

    history = Causeway.state_history(pid)

    assert Enum.map(history, & &1.data) == [
             %{old: nil, new: %{count: 1}},
             %{old: %{count: 1}, new: %{count: 3}},
             %{old: %{count: 3}, new: %{count: 0}}
           ]

    [_init, add, reset] = history
    add_msg = Causeway.event(add.parent_id)
    assert add_msg.type == :message_receive
    assert add_msg.data == %{from: self(), message: {:add, 2}}
    assert {:caused_by, add_msg.id} in add.links

    reset_msg = Causeway.event(reset.parent_id)
    assert reset_msg.data.message == :reset

    # receives: two :get calls, one add, the cast, the info
    receives = Causeway.events(pid: pid, type: :message_receive)
    assert length(receives) == 5
    # the unchanged-state callbacks did not record a state change
    assert length(history) == 3

    # the callbacks are calls too, nested under nothing, caused by their message
    [handle_add | _] = Causeway.events(pid: pid, type: :function_entry, function: :handle_call)
    assert handle_add.parent_id == add_msg.id
  end

  test "once a message is handled, it causes nothing more" do
    {:ok, pid} = Counter.start_link(1)
    :ok = GenServer.call(pid, {:add, 2})
    # a state change in the server after its handler returned (not from a message)
    :sys.replace_state(pid, fn s ->
      Causeway.Runtime.state_change(s, %{count: 42})
      %{count: 42}
    end)

    flush!()
    last = List.last(Causeway.state_history(pid))
    assert last.data.new == %{count: 42}
    assert last.parent_id == nil
  end
end
