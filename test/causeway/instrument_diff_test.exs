defmodule Causeway.InstrumentDiffTest.Cases do
  # The constructs compared plain and instrumented (see
  # Causeway.InstrumentDiff): `{name, source, calls}`. To add a case: a
  # module source and a list of calls.
  import ExUnit.Assertions

  # the stack size at the point of the call (a tail call: no frame of its own)
  @stack "Process.info(self(), :stack_size)"

  def get(name), do: List.keyfind(all(), name, 0)

  def all do
    [
      {"Clauses",
       """
       defmodule @@M@@ do
         def classify(x) when is_integer(x) and x > 0, do: :positive
         def classify(x) when is_integer(x), do: :non_positive
         def classify(x) when is_binary(x) or is_atom(x), do: {:other, x}
         def head([h | _]), do: h

         # a FunctionClauseError raised under an instrumented frame
         def call_head(l) do
           x = head(l)
           {:head, x}
         end
         def pair({:ok, v}, %{k: k}), do: {v, k}
         def unused(x, _y, _), do: :ok
         def pinned(<<a, rest::binary>>), do: {a, rest}
       end
       """,
       [
         {:classify, [5]},
         {:classify, [-5]},
         {:classify, ["x"]},
         {:classify, [1.5]},
         {:head, [[]]},
         {:head, [[1]]},
         {:call_head, [[]]},
         {:pair, [{:ok, 1}, %{k: 2}]},
         {:pair, [{:error, 1}, %{}]},
         {:unused, [1, 2, 3]},
         {:pinned, ["ab"]},
         {:pinned, [""]}
       ]},
      {"Defaults",
       """
       defmodule @@M@@ do
         def greet(name, greeting \\\\ "hello"), do: "\#{greeting} \#{name}"
         def mid(a, b \\\\ 2, c), do: {a, b, c}
         def all(a \\\\ 1, b \\\\ 2), do: {a, b}

         def head(a, b \\\\ :b)
         def head(a, b) when is_atom(a), do: {a, b}
         def head(a, _b), do: {:not_atom, a}

         # an explicit start/2, then start/3 whose default makes a start/2 too
         def start(children, opts) when is_list(children), do: {:list, children, opts}
         def start(mod, args, opts \\\\ []), do: {mod, args, opts}
       end
       """,
       [
         {:greet, ["ada"]},
         {:greet, ["ada", "hi"]},
         {:mid, [1, 3]},
         {:mid, [1, 5, 3]},
         {:all, []},
         {:all, [9]},
         {:all, [9, 8]},
         {:head, [:x]},
         {:head, ["x", 2]},
         {:start, [[1], [a: 1]]},
         {:start, [:m, :a]},
         {:start, [:m, :a, [b: 1]]}
       ]},
      {"Anonymous",
       """
       defmodule @@M@@ do
         def div_all(l), do: Enum.map(l, fn x -> 1 / x end)
         def div_for(l), do: for(x <- l, do: 1 / x)

         def find_first(l, p) do
           Enum.each(l, fn x -> if p.(x), do: throw({:found, x}) end)
           :none
         end

         def nested_exit(l), do: Enum.map(l, fn x -> Enum.map([x], fn y -> exit({:y, y}) end) end)
         def nested_raise(l), do: Enum.flat_map(l, fn x -> for y <- [x], do: raise("bad \#{y}") end)
         def capture(l), do: Enum.map(l, &Integer.parse/1)

         def with_else(m) do
           with {:ok, a} <- Map.fetch(m, :a),
                {:ok, b} <- Map.fetch(m, :b) do
             a / b
           else
             :error -> :missing
           end
         end

         def with_plain(m) do
           with {:ok, a} <- Map.fetch(m, :a), do: Integer.to_string(a)
         end
       end
       """,
       [
         {:div_all, [[1, 2]]},
         {:div_all, [[1, 0]]},
         {:div_for, [[1, 0]]},
         {:find_first, [[1, 2, 3], &(&1 == 2)]},
         {:find_first, [[1], &(&1 == 2)]},
         {:nested_exit, [[1]]},
         {:nested_raise, [[1]]},
         {:capture, [["1", "x"]]},
         {:with_else, [%{a: 1, b: 2}]},
         {:with_else, [%{a: 1, b: 0}]},
         {:with_else, [%{a: 1}]},
         {:with_plain, [%{a: 1}]},
         {:with_plain, [%{}]},
         {:with_plain, [%{a: :x}]}
       ]},
      {"TryReceive",
       """
       defmodule @@M@@ do
         def rescuing(x) do
           String.to_integer(x)
         rescue
           e in ArgumentError -> {:rescued, e, __STACKTRACE__}
         end

         def catching(f) do
           try do
             f.()
           catch
             :throw, v -> {:caught, v}
             :exit, v -> {:exited, v}
           after
             send(self(), :after)
           end
         end

         def reraise_it(x) do
           try do
             String.to_integer(x)
           rescue
             e -> reraise e, __STACKTRACE__
           end
         end

         def rescue_tail(x) do
           String.to_integer(x)
         rescue
           _ -> String.to_atom(x)
         end

         def here, do: Process.info(self(), :current_stacktrace)
         def here_inside(x), do: {x, Process.info(self(), :current_stacktrace)}

         def recv(t) do
           receive do
             {:msg, m} -> {:got, m}
           after
             t -> :timeout
           end
         end

         def recv_sent(m) do
           send(self(), {:msg, m})
           recv(0)
         end
       end
       """,
       [
         {:rescuing, ["1"]},
         {:rescuing, ["x"]},
         {:catching, [fn -> throw(:t) end]},
         {:catching, [fn -> exit(:e) end]},
         {:catching, [fn -> raise "r" end]},
         {:reraise_it, ["x"]},
         {:rescue_tail, ["1"]},
         {:rescue_tail, [[]]},
         {:here, []},
         {:here_inside, [1]},
         {:recv, [0]},
         {:recv_sent, [:hi]}
       ]},
      {"TailCalls",
       """
       defmodule @@M@@ do
         def loop(0), do: #{@stack}
         def loop(n), do: loop(n - 1)

         def count(n, acc \\\\ 0)
         def count(0, acc), do: finish(acc)
         def count(n, acc) when n > 0, do: count(n - 1, acc + 1)
         defp finish(acc), do: {acc, #{@stack}}

         def branchy(n) do
           cond do
             n == 0 -> #{@stack}
             rem(n, 2) == 0 -> if n > 0, do: branchy(n - 1), else: :neg
             true -> case n do
               _ -> branchy(n - 1)
             end
           end
         end

         def ping(0), do: #{@stack}
         def ping(n), do: pong(n - 1)
         def pong(n), do: ping(n)

         def receive_loop(n) do
           receive do
             :tick when n == 0 -> #{@stack}
             :tick -> send(self(), :tick); receive_loop(n - 1)
           end
         end

         def run_receive_loop(n) do
           send(self(), :tick)
           receive_loop(n)
         end

         def fib(0), do: 0
         def fib(1), do: 1
         def fib(n), do: fib(n - 1) + fib(n - 2)

         # a tail call into another function that raises: no frame of the caller
         def outer(x), do: inner(x)
         def inner(x), do: String.to_integer(x)
         def remote_tail(x), do: :erlang.binary_to_atom(x)
         def apply_tail(f, x), do: f.(x)
         def and_tail(x), do: is_binary(x) and String.to_integer(x)

         # macros in tail position, next to a tail call: their own lines
         def countdown(n) do
           if n > 0 do
             countdown(n - 1)
           else
             raise ArgumentError,
                   "done"
           end
         end

         def unless_raise(x) do
           unless x,
             do:
               raise("no"),
             else: unless_raise(!x)
         end
       end
       """,
       [
         {:loop, [10]},
         {:loop, [100_000]},
         {:count, [100_000]},
         {:branchy, [100_000]},
         {:ping, [100_000]},
         {:run_receive_loop, [100_000]},
         {:fib, [15]},
         {:outer, ["x"]},
         {:remote_tail, [1]},
         {:apply_tail, [&String.to_integer/1, "x"]},
         {:and_tail, ["x"]},
         {:and_tail, [1]},
         {:countdown, [3]},
         {:unless_raise, [true]}
       ]},
      {"UsingFromInstrumented",
       """
       defmodule @@M@@.Lib do
         @@I@@
         defmacro __using__(_) do
           quote do
             def injected(x), do: {:injected, x}
           end
         end

         def lib_fun(x), do: x
       end

       defmodule @@M@@ do
         use @@M@@.Lib
         def own(x), do: @@M@@.Lib.lib_fun(x)
       end
       """, [{:injected, [1]}, {:own, [2]}]},
      {
        "JSONParser",
        # a real recursive-descent parser, every function public
        File.read!("test/support/json_parser.ex")
        |> String.replace("defmodule Causeway.Test.JSONParser do", "defmodule @@M@@ do")
        |> String.replace(~r/\bdefp\b/, "def"),
        [
          {:parse!, [~s({"a": [1, 2.5, -3e2, true, false, null], "b": {"c": "d\\n"}})]},
          {:parse!, [~s([) <> String.duplicate("1,", 50_000) <> "1]"]},
          {:parse!, [~s(") <> String.duplicate("x", 100_000) <> ~s(")]},
          {:parse!, [~s({"a": })]},
          {:parse!, [~s([1, 2] x)]},
          {:parse!, [~s("unterminated)]},
          {:parse!, [42]}
        ]
      },
      {"Misc",
       """
       defmodule @@M@@ do
         def ident(x), do: x

         def def_catch(f) do
           f.()
         catch
           :throw, v -> String.to_integer(v)
         end

         def def_after(f) do
           f.()
         after
           send(self(), :after)
         end

         def try_else(x) do
           try do
             Integer.parse(x)
           rescue
             _ -> :bad
           else
             {n, ""} -> Integer.to_string(n)
             _ -> String.to_atom(x)
           end
         end

         def hygiene(call_id, result), do: {call_id, result, binding()}
         def env, do: __ENV__.function
         def reducer(l), do: for(x <- l, reduce: 0, do: (acc -> acc + x))
         def pinned(x, l), do: Enum.filter(l, fn ^x -> true; _ -> false end)
         def cap(l), do: Enum.map(l, &ident/1)
         def guards(x) when is_atom(x) when is_binary(x), do: {:ok, x}

         def nested(x) do
           receive do
             :never -> :no
           after
             0 ->
               case x do
                 {:a, y} -> if y > 0, do: nested({:a, y - 1}), else: String.to_integer(y)
                 other -> other
               end
           end
         end
       end
       """,
       [
         {:ident, [1]},
         {:def_catch, [fn -> throw("1") end]},
         {:def_catch, [fn -> throw("x") end]},
         {:def_catch, [fn -> :ok end]},
         {:def_after, [fn -> raise "a" end]},
         {:try_else, ["1"]},
         {:try_else, ["1x"]},
         {:try_else, [1]},
         {:hygiene, [1, 2]},
         {:env, []},
         {:reducer, [[1, 2]]},
         {:pinned, [1, [1, 2, 1]]},
         {:cap, [[1]]},
         {:guards, [:a]},
         {:guards, [1]},
         {:nested, [{:a, 3}]},
         {:nested, [:b]}
       ]},
      {
        "JSONEncoder",
        # Causeway's own encoder, every function public
        File.read!("lib/causeway/json.ex")
        |> String.replace("defmodule Causeway.JSON do", "defmodule @@M@@ do")
        |> String.replace(~r/\bdefp\b/, "def"),
        [
          {:encode!, [%{a: [1, 2.5, "x\n", nil, true], b: %{"c" => {:t, 1}}}]},
          {:encode!, [String.duplicate("a\"b", 30_000)]},
          {:encode!, [<<255, 0>>]},
          {:encode!, [[1.0e20, -0.0, 3.0, URI.parse("http://x")]]},
          {:encode_to_iodata, [%{1 => 2}]},
          {:escape, [1, ""]}
        ]
      },
      {
        "Warnings",
        # code the compiler warns about: the same warnings, at the same lines
        """
        defmodule @@M@@ do
          def unused(x), do: :ok
          def unused_in_body(x) do
            y = 1
            x
          end

          def never(:a), do: 1
          def never(_), do: 2
          def never(:b), do: 3

          def undefined_remote, do: NoSuchModule.f()
          def undefined_local_tail(x), do: String.no_such_function(x)
          def will_fail, do: String.to_integer("nope")
          def will_fail_inside, do: {:ok, String.to_integer("nope")}
          def ignored(x) do
            x + 1
            :ok
          end

          def unused_default(a, b \\\\ 2), do: a
        end
        """,
        [
          {:unused, [1]},
          {:unused_in_body, [1]},
          {:never, [:b]},
          {:undefined_remote, []},
          {:will_fail, []},
          {:will_fail_inside, []},
          {:ignored, [1]},
          {:unused_default, [1]}
        ]
      },
      {"KernelExcept",
       """
       defmodule @@M@@ do
         import Kernel, except: [abs: 1, div: 2]
         @@I@@

         def abs(x) when x < 0, do: {:abs, -x}
         def abs(x), do: {:abs, x}
         def div(a, b), do: {:div, Kernel.div(a, b)}
         def uses(x), do: abs(x)
       end
       """, [{:abs, [-1]}, {:div, [7, 2]}, {:div, [1, 0]}, {:uses, [-3]}]},
      {"KernelExceptAfter",
       """
       defmodule @@M@@ do
         @@I@@
         import Kernel, except: [abs: 1, div: 2]

         def abs(x) when x < 0, do: {:abs, -x}
         def abs(x), do: {:abs, x}
         def div(a, b), do: {:div, Kernel.div(a, b)}
         def uses(x), do: abs(x)
       end
       """, [{:abs, [-1]}, {:div, [7, 2]}, {:div, [1, 0]}, {:uses, [-3]}]},
      {"Delegates",
       """
       defmodule @@M@@ do
         defdelegate reverse(l), to: Enum
         defdelegate up(s), to: String, as: :upcase
         def own(x), do: reverse(x)
       end
       """, [{:reverse, [[1, 2]]}, {:up, ["a"]}, {:up, [1]}, {:own, [[1, 2]]}]},
      {"Overridable",
       """
       defmodule @@M@@.Base do
         defmacro __using__(_) do
           quote do
             def size(x), do: {:base, length(x)}
             def hello, do: :hello
             defoverridable size: 1
           end
         end
       end

       defmodule @@M@@ do
         use @@M@@.Base
         @@I@@

         def size(x) when is_list(x), do: {:mine, super(x)}
         def size(_), do: raise(ArgumentError, "not a list")

         def twice(x), do: x * 2
         defoverridable twice: 1
         def twice(x), do: super(x) + 1

         def thrice(x), do: x * 3
         defoverridable thrice: 1
         def thrice(x), do: super(x)
       end
       """,
       [
         {:size, [[1]]},
         {:size, [:a]},
         {:hello, []},
         {:twice, [2]},
         {:twice, [:a]},
         {:thrice, [:a]}
       ]},
      {"Protocols",
       """
       defprotocol @@M@@.Shape do
         def area(shape)
       end

       defmodule @@M@@ do
         @@I@@
         @derive {Inspect, only: [:w]}
         defstruct w: 1, h: 2

         defimpl @@M@@.Shape do
           def area(%{w: w, h: h}), do: w * h
         end

         defprotocol Named do
           @fallback_to_any true
           def name(x)
         end

         defimpl Named, for: Any do
           def name(_), do: :any
         end

         def named(x), do: Named.name(x)

         def new(w, h), do: %__MODULE__{w: w, h: h}
         def area(s), do: @@M@@.Shape.area(s)
         def shown(s), do: inspect(s)
       end

       defmodule @@M@@.Error do
         defexception [:value]
         @impl true
         def message(%{value: v}), do: "bad value \#{inspect(v)}"
       end

       defmodule @@M@@.Raiser do
         @@I@@
         def raise_it(v), do: raise(@@M@@.Error, value: v)
       end
       """,
       [
         {:area, [%{__struct__: :none}]},
         fn m -> m.area(m.new(2, 3)) end,
         fn m -> m.shown(m.new(2, 3)) end,
         {:named, [1]},
         fn m -> Module.concat(m, Raiser).raise_it(5) end
       ]},
      {"Macros",
       """
       defmodule @@M@@ do
         @compile {:inline, inlined: 1}
         def inlined(x), do: x + 1
         def uses_inlined(x), do: inlined(x) * 2

         for {name, value} <- [one: 1, two: 2] do
           def unquote(name)(), do: unquote(value)
           def unquote(:"\#{name}_plus")(x), do: x + unquote(value)
         end

         args = [Macro.var(:a, nil), Macro.var(:b, nil)]
         def spliced(unquote_splicing(args)), do: {a, b}

         defmacro double(x), do: quote(do: unquote(x) * 2)
         def use_macro(x), do: double(x)

         # a private macro in tail position: its arguments stay code
         defmacrop lazy(condition, expr) do
           quote do
             if unquote(condition), do: unquote(expr), else: {:skipped, unquote(Macro.to_string(expr))}
           end
         end

         def use_lazy(x), do: lazy(x, String.to_integer("nope"))

         require Logger
         def log(x), do: Logger.debug("x \#{x}")

         import String, only: [upcase: 1]
         def up(x), do: upcase(x)
         def piped(l), do: l |> Enum.map(&(&1 * 2)) |> Enum.sum()
         def either(a, b), do: a || String.to_integer(b)
         def field(m), do: m.a
         def unless_tail(x), do: unless(x, do: String.to_atom(x), else: :yes)

         @attr :first
         def attr_first, do: @attr
         @attr :second
         def attr_second, do: @attr
       end
       """,
       [
         {:inlined, [1]},
         {:uses_inlined, [:a]},
         {:one, []},
         {:two_plus, [1]},
         {:two_plus, [:x]},
         {:spliced, [1, 2]},
         {:use_macro, [3]},
         {:attr_first, []},
         {:attr_second, []}
       ]},
      {"GenServerBefore",
       """
       defmodule @@M@@ do
         @@I@@
         use GenServer

         def start(n), do: GenServer.start(__MODULE__, n)
         @impl true
         def init(n), do: {:ok, n, {:continue, :boot}}
         @impl true
         def handle_continue(:boot, n), do: {:noreply, n + 1}
         @impl true
         def handle_call(:get, _from, n), do: {:reply, n, n}
         def handle_call(:crash, _from, _n), do: raise("crash")
         @impl true
         def handle_cast({:add, k}, n), do: {:noreply, n + k}
       end
       """,
       [
         fn m ->
           {:ok, pid} = m.start(1)
           GenServer.cast(pid, {:add, 2})
           send(pid, :unexpected)
           {GenServer.call(pid, :get), catch_exit(GenServer.call(pid, :crash))}
         end
       ]},
      {"GenServerAfter",
       """
       defmodule @@M@@ do
         use GenServer
         @@I@@

         def start(n), do: GenServer.start(__MODULE__, n)
         @impl true
         def init(n), do: {:ok, n}
         @impl true
         def handle_call(:get, _from, n), do: {:reply, n, n}
         @impl true
         def handle_info({:add, k}, n), do: {:noreply, n + k}
       end
       """,
       [
         fn m ->
           {:ok, pid} = m.start(1)
           send(pid, {:add, 2})

           {GenServer.call(pid, :get), catch_exit(GenServer.cast(pid, :nope)),
            GenServer.call(pid, :get)}
         end
       ]},
      {"Statem",
       """
       defmodule @@M@@ do
         @@I@@
         @behaviour :gen_statem

         def start, do: :gen_statem.start(__MODULE__, 0, [])
         @impl true
         def callback_mode, do: :state_functions
         @impl true
         def init(n), do: {:ok, :off, n}

         def off({:call, from}, :flip, n), do: {:next_state, :on, n + 1, [{:reply, from, :on}]}
         def off(:cast, :noop, _n), do: :keep_state_and_data
         def on({:call, from}, :flip, n), do: {:next_state, :off, n, [{:reply, from, :off}]}
         def on({:call, from}, :count, n), do: {:keep_state_and_data, [{:reply, from, n}]}
         def helper(a, b, c), do: {a, b, c}
       end
       """,
       [
         fn m ->
           {:ok, pid} = m.start()
           :gen_statem.cast(pid, :noop)
           r = {:gen_statem.call(pid, :flip), :gen_statem.call(pid, :count)}
           {r, :gen_statem.call(pid, :flip), m.helper(1, 2, 3)}
         end
       ]}
    ]
  end
end

defmodule Causeway.InstrumentDiffTest do
  # `use Causeway.Instrument` must not change what code does: each case of
  # Cases is compiled plain and instrumented by Causeway.InstrumentDiff and
  # the same calls are compared (results, exceptions and their messages,
  # throws, exits, stack traces, stack size, compile warnings). A Causeway
  # instance records while the instrumented calls run.
  use Causeway.Case, async: false

  # some cases are long (see the timings in --trace); on a loaded 2-core
  # machine one went past ExUnit's default 60 s
  @moduletag timeout: 300_000

  alias Causeway.InstrumentDiff
  alias Causeway.InstrumentDiffTest.Cases

  setup_all do
    on_exit(fn -> File.rm_rf!(InstrumentDiff.dir()) end)
  end

  for {name, _, _} <- Cases.all() do
    @name name
    test "#{name}: instrumented behaves as plain" do
      start_causeway!()
      {_, source, calls} = Cases.get(@name)
      assert InstrumentDiff.run(@name, source, calls) == []
      # and the instrumented copy did record its calls
      {_plain, instrumented} = InstrumentDiff.modules(@name)
      prefix = Atom.to_string(instrumented)
      flush!()

      assert Enum.any?(:code.all_loaded(), fn {mod, _} ->
               String.starts_with?(Atom.to_string(mod), prefix) and
                 Causeway.events(module: mod, type: :function_entry, limit: 1) != []
             end)
    end
  end

  # With no instance running, an instrumented body runs its plain copy
  # (Causeway.Instrument.Dual): the same comparison, on that copy.
  for {name, _, _} <- Cases.all() do
    @name name
    test "#{name}: instrumented, with no instance running, behaves as plain" do
      refute Causeway.Switch.On.on?()
      {_, source, calls} = Cases.get(@name)
      assert InstrumentDiff.run(@name <> "Off", source, calls) == []
    end
  end

  test "with no instance running, an instrumented body runs without its try (its plain copy)" do
    # the wrapped body's `try` is one more catch in every frame of a
    # recursion (the catch level says so); the plain copy has none, and
    # does not build the tail tuples either
    source = """
    defmodule @@M@@ do
      @@I@@
      def depth(0), do: [Process.info(self(), :catchlevel)]
      def depth(n), do: [n | depth(n - 1)]

      def count([]), do: elem(Process.info(self(), :catchlevel), 1)
      def count([_ | t]), do: 1 + count(t)

      def loop(0, acc), do: {acc, Process.info(self(), :catchlevel)}
      def loop(n, acc), do: loop(n - 1, [n | acc])

      # bodies the compiler resolves (no try left): tail calls with no
      # operands or only literal ones, and a value
      def lit(x) when x > 0, do: level()
      def lit(0), do: pair(1, :two)
      def lit(_), do: :negative
      def level, do: Process.info(self(), :catchlevel)
      def pair(a, b), do: {a, b, Process.info(self(), :catchlevel)}

      # a receive loop (its receive is a jump inside the function)
      def serve(n) do
        receive do
          {:level, from} ->
            send(from, Process.info(self(), :catchlevel))
            serve(n + 1)

          :stop ->
            n
        after
          1_000 -> :timeout
        end
      end
    end
    """

    server = """
    defmodule @@M@@.Server do
      @@I@@
      use GenServer
      def init(n), do: {:ok, n}
      def handle_call(:level, _from, n), do: {:reply, Process.info(self(), :catchlevel), n + 1}
      def handle_cast(:bump, n), do: {:noreply, n + 1}
      def handle_info(:bump, n), do: {:noreply, n + 1}
    end

    defmodule @@M@@.Machine do
      @@I@@
      @behaviour :gen_statem
      def callback_mode, do: :handle_event_function
      def init(n), do: {:ok, :idle, n}

      def handle_event({:call, from}, :level, state, n),
        do: {:next_state, state, n + 1, [{:reply, from, Process.info(self(), :catchlevel)}]}

      def handle_event(:cast, :bump, _state, n), do: {:next_state, :busy, n + 1}
    end
    """

    source = source <> server

    # a GenServer's callbacks: with no instance, no report of the message,
    # no try around the callback
    genserver = fn m ->
      {:ok, pid} = GenServer.start(Module.concat(m, Server), 0)
      GenServer.cast(pid, :bump)
      send(pid, :bump)
      level = GenServer.call(pid, :level)
      {level, :sys.get_state(pid)}
    end

    statem = fn m ->
      {:ok, pid} = :gen_statem.start(Module.concat(m, Machine), 0, [])
      :gen_statem.cast(pid, :bump)
      level = :gen_statem.call(pid, :level)
      {level, :sys.get_state(pid)}
    end

    serve = fn m ->
      for msg <- [{:level, self()}, {:level, self()}, :stop], do: send(self(), msg)
      n = m.serve(0)
      {n, for(_ <- 1..2, do: receive(do: ({:catchlevel, l} -> l)))}
    end

    calls =
      [
        {:depth, [50]},
        {:count, [Enum.to_list(1..50)]},
        {:loop, [1_000, []]},
        serve,
        genserver,
        statem
      ] ++
        [{:lit, [1]}, {:lit, [0]}, {:lit, [-1]}]

    refute Causeway.Switch.On.on?()
    assert InstrumentDiff.run("OffCopy", source, calls) == []

    # and recording, the same module does have its try in every frame
    {_plain, instr} = InstrumentDiff.modules("OffCopy")
    start_causeway!()
    assert Causeway.Switch.On.on?()
    assert {:catchlevel, level} = in_process(fn -> instr.depth(50) |> List.last() end)
    assert level >= 51
  end

  test "the harness sees a difference: a module that changes a result" do
    source = """
    defmodule @@M@@ do
      @@I@@
      def f, do: __MODULE__ |> Atom.to_string() |> String.contains?("Instr")
    end
    """

    assert [diff] = InstrumentDiff.run("HarnessSelfCheck", source, [{:f, []}], use: "")
    assert diff =~ "call 0"
  end
end
