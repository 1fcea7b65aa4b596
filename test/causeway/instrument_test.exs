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

    @trace true
    def head(a, b \\ 1)
    def head(a, b) when a > 0, do: {:pos, a, b}
    def head(a, b), do: {:other, a, b}

    def after_head(x), do: x
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

  defmodule Loops do
    use Causeway.Instrument

    def loop(0, _), do: Process.info(self(), :stack_size)
    def loop(n, x), do: loop(n - 1, x)

    def open_calls(0), do: Causeway.metrics().open_calls
    def open_calls(n), do: open_calls(n - 1)

    def serve(n) do
      receive do
        :tick when n == 0 ->
          Process.info(self(), :stack_size)

        :tick ->
          send(self(), :tick)
          serve(n - 1)
      end
    end

    def fib(n) when n < 2, do: n
    def fib(n), do: fib(n - 1) + fib(n - 2)

    def caller(x), do: helper(x)

    def heads(%URI{host: h}, %{a: a}, {:ok, [b | _]}, _ignored, %{} = whole),
      do: {h, a, b, whole}

    def helper(x), do: {:helped, x}
  end

  defmodule PlainLoops do
    def loop(0, _), do: Process.info(self(), :stack_size)
    def loop(n, x), do: loop(n - 1, x)

    def serve(n) do
      receive do
        :tick when n == 0 ->
          Process.info(self(), :stack_size)

        :tick ->
          send(self(), :tick)
          serve(n - 1)
      end
    end
  end

  defmodule Light do
    use Causeway.Instrument
    @behaviour :gen_statem

    def start_link, do: :gen_statem.start_link(__MODULE__, 0, [])

    @impl true
    def callback_mode, do: :state_functions

    @impl true
    def init(n), do: {:ok, :off, n}

    def off({:call, from}, :flip, n), do: {:next_state, :on, n + 1, [{:reply, from, :on}]}
    def off(:cast, :noop, _n), do: :keep_state_and_data
    def on({:call, from}, :flip, n), do: {:next_state, :off, n, [{:reply, from, :off}]}
  end

  defmodule Door do
    use Causeway.Instrument
    @behaviour :gen_statem

    def start_link, do: :gen_statem.start_link(__MODULE__, [], [])

    @impl true
    def callback_mode, do: :handle_event_function

    @impl true
    def init(log), do: {:ok, :closed, log}

    @impl true
    def handle_event(:cast, :open, :closed, log), do: {:next_state, :open, [:opened | log]}
    def handle_event(:cast, :knock, _state, log), do: {:keep_state, [:knocked | log]}
    def handle_event(:info, :ping, _state, _log), do: :keep_state_and_data
  end

  @counter_source """
  def start_link(n), do: GenServer.start_link(__MODULE__, n)
  @impl true
  def init(n), do: {:ok, n, {:continue, :double}}
  @impl true
  def handle_continue(:double, n), do: {:noreply, n * 2}
  @impl true
  def handle_call(:get, _from, n), do: {:reply, n, n}
  @impl true
  def handle_cast({:add, k}, n), do: {:noreply, n + k}
  """

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

  test "the switch instrumented code checks: on only while the default instance runs" do
    # (setup started the default instance)
    assert Causeway.Switch.On.on?()
    stop_causeway!()
    refute Causeway.Switch.On.on?()
    # off: instrumented code behaves the same and reports nothing
    assert Traced.add(1, 2) == 3

    # another instance is not the one instrumented code reports to
    {:ok, other} = Causeway.start_link(name: :switch_other, dir: tmp_dir!("other"))
    refute Causeway.Switch.On.on?()
    :ok = Causeway.stop(:switch_other)
    refute Process.alive?(other)

    # started and stopped in a row (and from processes at once), it ends
    # saying what is true, and the first call after a start is recorded
    for i <- 1..5 do
      {_pid, _dir} = start_causeway!()
      assert Causeway.Switch.On.on?()
      assert Traced.add(i, 1) == i + 1
      flush!()
      assert [%{data: [^i, 1]}] = Causeway.events(function: :add, type: :function_entry)
      stop_causeway!()
      refute Causeway.Switch.On.on?()
    end

    tasks = for _ <- 1..8, do: Task.async(fn -> Causeway.Switch.sync() end)
    Enum.each(tasks, &Task.await/1)
    refute Causeway.Switch.On.on?()
    start_causeway!()

    Enum.map(1..8, fn _ -> Task.async(fn -> Causeway.Switch.sync() end) end)
    |> Enum.each(&Task.await/1)

    assert Causeway.Switch.On.on?()
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

    # a tagged head tags every clause of the function, and only it
    assert Tagged.head(1) == {:pos, 1, 1}
    assert Tagged.head(-1, 2) == {:other, -1, 2}
    assert Tagged.after_head(3) == 3
    flush!()
    entries = Causeway.events(pid: self(), type: :function_entry, module: Tagged)

    assert Enum.map(entries, &{&1.function, &1.data}) == [
             traced: [2],
             head: [1, 1],
             head: [-1, 2]
           ]
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

  test "a self tail call stays a tail call: 10 M iterations in the stack of one" do
    stop_causeway!()
    # no instance: the loop itself (with one, the 20 M events take a while)
    plain = PlainLoops.loop(10, :x)
    assert Loops.loop(10, :x) == plain
    assert Loops.loop(10_000_000, :x) == plain

    send(self(), :tick)
    plain_serve = PlainLoops.serve(10)
    send(self(), :tick)
    assert Loops.serve(10_000_000) == plain_serve
  end

  test "each iteration of a tail-recursive loop is recorded, as siblings" do
    assert {:stack_size, _} = Loops.loop(3, :x)
    flush!()
    entries = Causeway.events(pid: self(), type: :function_entry, function: :loop)
    # (a `_` in the head is reported as :_: the clause binds nothing there)
    assert Enum.map(entries, & &1.data) == [[3, :x], [2, :x], [1, :x], [0, :_]]
    # each is closed before the next opens: none is the parent of another
    assert Enum.all?(entries, &(&1.parent_id == nil))
    exits = Causeway.events(pid: self(), type: :function_exit, function: :loop)
    [t1, t2, t3, last] = Enum.map(exits, & &1.data)
    assert t1 == {:tail_call, {Loops, :loop, 2}} and t2 == t1 and t3 == t1
    # the last iteration tail-calls Process.info/2 (not instrumented)
    assert last == {:tail_call, {Process, :info, 2}}
    assert Causeway.metrics().open_calls == 0

    # a tail call to another function: the callee is a sibling too
    assert Loops.caller(1) == {:helped, 1}
    flush!()
    [caller] = Causeway.events(pid: self(), type: :function_entry, function: :caller)
    [helper] = Causeway.events(pid: self(), type: :function_entry, function: :helper)
    assert helper.parent_id == nil and caller.parent_id == nil
    [helper_exit] = Causeway.events(pid: self(), type: :function_exit, function: :helper)
    assert helper_exit.data == {:helped, 1}
  end

  test "the arguments are rebuilt from the heads" do
    uri = URI.parse("http://x")
    assert {"x", 1, 2, %{z: 0}} = Loops.heads(uri, %{a: 1, b: 9}, {:ok, [2, 3]}, :skip, %{z: 0})
    flush!()
    [entry] = Causeway.events(pid: self(), type: :function_entry, function: :heads)
    # matched parts as passed, the rest of a map left out, `_` as :_
    assert entry.data == [%{host: "x"}, %{a: 1}, {:ok, [2 | :_]}, :skip, %{z: 0}]
  end

  test "the native call context stays bounded over a long recorded loop" do
    # inside the last iteration, only that iteration's call is open
    assert Loops.open_calls(200_000) <= 1
  end

  test "non-tail recursion is recorded as nested calls" do
    assert Loops.fib(3) == 2
    flush!()
    [root | rest] = Causeway.events(pid: self(), type: :function_entry, function: :fib)
    assert root.parent_id == nil
    assert length(rest) == 4
    assert Enum.all?(rest, &(&1.parent_id != nil))
    tree = Causeway.call_tree(root.call_id)
    assert tree.result == 2
    assert length(tree.children) == 2
  end

  test "a :gen_statem (state functions): events are receives, state changes are caused by them" do
    {:ok, pid} = Light.start_link()
    :gen_statem.cast(pid, :noop)
    assert :gen_statem.call(pid, :flip) == :on
    assert :gen_statem.call(pid, :flip) == :off
    flush!()

    history = Causeway.state_history(pid)

    assert Enum.map(history, & &1.data) == [
             %{old: nil, new: {:off, 0}},
             %{old: {:off, 0}, new: {:on, 1}},
             %{old: {:on, 1}, new: {:off, 1}}
           ]

    receives = Causeway.events(pid: pid, type: :message_receive)

    assert [
             %{data: %{from: nil, message: {:cast, :noop}}},
             %{data: %{from: me1, message: {{:call, _}, :flip}}} = flip,
             %{data: %{from: me2, message: {{:call, _}, :flip}}}
           ] = receives

    assert me1 == self() and me2 == self()
    [_init, on, _off] = history
    assert on.parent_id == flip.id
    assert {:caused_by, flip.id} in on.links
  end

  test "a :gen_statem (handle_event_function): state or data changes are recorded" do
    {:ok, pid} = Door.start_link()
    :gen_statem.cast(pid, :knock)
    :gen_statem.cast(pid, :open)
    send(pid, :ping)
    assert {:open, [:opened, :knocked]} == :sys.get_state(pid)
    flush!()

    assert Enum.map(Causeway.state_history(pid), & &1.data) == [
             %{old: nil, new: {:closed, []}},
             %{old: {:closed, []}, new: {:closed, [:knocked]}},
             %{old: {:closed, [:knocked]}, new: {:open, [:opened, :knocked]}}
           ]

    messages =
      Causeway.events(pid: pid, type: :message_receive)
      |> Enum.map(& &1.data.message)
      |> Enum.reject(&match?({{:call, _}, _}, &1))

    assert messages == [{:cast, :knock}, {:cast, :open}, {:info, :ping}]
  end

  test "handle_continue records its state change, caused by its call" do
    [{mod, _}] =
      Code.compile_string("""
      defmodule Causeway.InstrumentTest.Continue do
        use Causeway.Instrument
        use GenServer
        #{@counter_source}
      end
      """)

    {:ok, pid} = mod.start_link(2)
    assert GenServer.call(pid, :get) == 4
    flush!()

    [init, continue] = Causeway.state_history(pid)
    assert init.data == %{old: nil, new: 2}
    assert continue.data == %{old: 2, new: 4}
    [call] = Causeway.events(pid: pid, type: :function_entry, function: :handle_continue)
    assert continue.parent_id == call.call_id
  end

  test "use Causeway.Instrument before or after use GenServer: no warning, the same events" do
    events =
      for {name, source} <- [
            Before: "use Causeway.Instrument\nuse GenServer\n" <> @counter_source,
            After: "use GenServer\nuse Causeway.Instrument\n" <> @counter_source
          ] do
        mod = Module.concat(__MODULE__, name)

        warnings =
          ExUnit.CaptureIO.capture_io(:stderr, fn ->
            Code.compile_string("defmodule #{inspect(mod)} do\n#{source}\nend")
          end)

        assert warnings == ""
        {:ok, pid} = mod.start_link(1)
        GenServer.cast(pid, {:add, 3})
        send(pid, :unexpected)
        assert GenServer.call(pid, :get) == 5
        flush!()

        pid
        |> then(&Causeway.events(pid: &1))
        |> Enum.map(fn
          %{type: :state_change} = e -> {:state_change, e.data}
          e -> {e.type, e.function}
        end)
      end

    [before, later] = events
    assert before == later
    assert {:state_change, %{old: 2, new: 5}} in before
    assert {:function_entry, :handle_continue} in before
  end

  test "an unknown option is a compile error naming it" do
    assert_raise CompileError, ~r/unknown option.*:bogus/, fn ->
      Code.compile_string("""
      defmodule Causeway.InstrumentTest.Bad do
        use Causeway.Instrument, bogus: true
      end
      """)
    end

    assert_raise CompileError, ~r/only: must be :all or :tagged/, fn ->
      Code.compile_string("""
      defmodule Causeway.InstrumentTest.Bad2 do
        use Causeway.Instrument, only: :some
      end
      """)
    end
  end
end
