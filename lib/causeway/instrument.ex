defmodule Causeway.Instrument do
  @moduledoc """
  Compile-time instrumentation: `use Causeway.Instrument` makes a module report
  its calls to `Causeway.Runtime`.

      defmodule Shop.Cart do
        use Causeway.Instrument            # every public function
        def add(cart, item), do: [item | cart]
      end

      defmodule Shop.Pricing do
        use Causeway.Instrument, only: :tagged
        @trace true
        def total(items), do: Enum.sum(items)   # reported
        def helper(x), do: x                    # not reported
      end

  Options: `only: :all` (the default: every public function) or
  `only: :tagged` (the functions preceded by `@trace true`). Any other option
  is a compile error.

  ## What a function reports

  Each function entry carries the `file` and `line` of the function's first
  clause (kept in the module at compile time, in its `:causeway_locations`
  attribute: nothing more is captured per call); `print_call_tree/2`,
  `print_timeline/2` and the Chrome trace show them.

  Each instrumented function reports its entry (with its arguments), then its
  exit with the return value, or the exception it raised, threw or exited
  with (`{:exception, kind, reason}`), which then continues unchanged with
  its original stacktrace.

  The arguments are rebuilt from the clause's head, which stays as written:
  a variable (`x`, `_x`, or `pattern = x`) comes out whole; literals, and
  tuples, lists, `<>` and maps made of them, as matched (a map or struct
  pattern gives a map of the keys it matched); what the head does not bind
  (`_`, a variable the clause never uses, a binary with sizes) is `:_` in
  its place, e.g. `{:ok, [2 | :_]}`. Write `%{} = state` rather than `%{}`
  to have an argument reported whole.

  A call in tail position is made as a tail call, as in the plain module: the
  function's exit is recorded just before it, with `{:tail_call, target}` as
  its result (`target` is `{module, function, arity}`, `{module_value,
  function, arity}` for a call on a computed module, or `{:fn, arity}` for an
  anonymous function), and the callee, if instrumented, is recorded as a
  sibling of the caller rather than its child. A self tail call (a loop, a
  `receive` loop) therefore runs in constant process stack and keeps the
  native call context balanced, while each iteration is recorded as its own
  call; non-tail recursion (`fib(n - 1) + fib(n - 2)`) is recorded as nested
  calls. Operators, guard functions and the functions that never return
  (`raise`, `throw`, `exit`) run inside the frame, so their value or
  exception is the function's own. What is not a call (a value, a `case`,
  `if`, `cond`, `receive`, `with` or `try` whose branches end in values) is
  the function's recorded result.

  ## How: the clauses themselves are rewritten

  `use Causeway.Instrument` imports its own `def/2` in place of
  `Kernel.def/2`. Each clause is still defined by `Kernel.def/2`, at its
  place in the module, with its own name, arguments, guards, default
  arguments and line metadata; only its body is wrapped (the body is
  handed to a macro that the compiler expands inside the function, where
  the calls in tail position are found). There is no extra
  function, no renamed clause and no extra frame: stack traces (in
  `__STACKTRACE__`, `Process.info(self(), :current_stacktrace)`, or an
  exception leaving the module), the fun names of `fn`s and comprehensions,
  compile warnings, and the clauses a `FunctionClauseError` lists are those
  of the uninstrumented module. A call that matches no clause raises before
  any body runs, so it is not recorded.

  Because `def/2` is imported, importing `Kernel` again matters: `import
  Kernel, except: [abs: 1]`, before or after `use Causeway.Instrument`,
  keeps both its exclusions and this `def/2`; a bare `import Kernel` (or
  one with `only: [def: 2]`) after it brings `Kernel.def/2` back and makes
  `def` ambiguous (a compile error that says so). A `def` quoted in the module (in a
  macro's `quote`) names this `def/2` in its import metadata; expanded in a
  module that did not `use Causeway.Instrument`, it is `Kernel.def/2`.

  Only the `def`s written in the module are instrumented: private
  functions, macros, and functions that other macros define (`defdelegate`,
  those injected by `use GenServer` or another `use`) are not, and neither
  are `child_spec`, `code_change`, `terminate`, `format_status`,
  `callback_mode` and names starting with `__`.

  ## OTP callbacks

  In a module with `@behaviour GenServer` (`use GenServer`, before or after
  `use Causeway.Instrument`), `handle_call/3`, `handle_cast/2` and
  `handle_info/2` also report their message as a `message_receive`, and
  `init/1`, `handle_*` and `handle_continue/2` report a `state_change` when
  the state they return differs from the one they got, caused by that
  message (or, for `init/1` and `handle_continue/2`, by the callback's call).

  In a module with `@behaviour :gen_statem`, `init/1` reports the initial
  state `{state_name, data}` as a `state_change` from `nil`; each event
  handled by `handle_event/4` or a state function (any public function of
  arity 3 called with an event type) is a `message_receive` of
  `{event_type, content}` (from the caller for `{:call, from}`), and a
  `state_change` from `{state, data}` to `{next_state, next_data}` is
  reported when either changed, caused by that event.

  These callbacks need their result, so a call in their tail position is
  not a tail call: a callback that ends by calling another function keeps
  its frame under that call.

  ## With no instance running

  Each wrapped body is compiled twice into its function: as written, and
  wrapped. The function first asks `Causeway.Switch.On.on?/0` (a remote
  call of a function returning a constant, reloaded when the default
  instance starts and stops) and runs the body as written when nothing
  records: no `try`, no tail tuple, no NIF call, the plain module's tail
  calls, stack traces and catch level. The copy is made by a Core Erlang
  transform (`Causeway.Instrument.Dual`, added as `@compile
  {:core_transform, ...}`) after the Elixir code is expanded, so each
  macro in the body runs once and each warning is printed once.

  A body that defines a `fn`, a capture or a comprehension (the compiler
  lifts those into local functions numbered in order, `-f/1-fun-0-`, and a
  second copy would renumber them) is not copied: with no instance it
  still runs wrapped, which costs the switch's call, a `try` and, for a
  call in tail position, a small tuple more than the plain one. GenServer
  callbacks that handle a message and a `:gen_statem`'s `handle_event/4`
  are copied too (with no instance, no `message_receive` is reported and no
  `try` is entered); `:gen_statem` state functions are not. The
  function's stack frame is shared by both copies, so a frame of a
  non-tail recursion can be a few words bigger than the plain one's.
  """

  @doc false
  defmacro __using__(opts) do
    opts = validate!(opts, __CALLER__)

    # Kernel.def/2 is replaced by ours; what the module already excluded from
    # Kernel (`import Kernel, except: [abs: 1]`) stays excluded
    imported =
      Keyword.get(__CALLER__.functions, Kernel, []) ++ Keyword.get(__CALLER__.macros, Kernel, [])

    except =
      Enum.uniq([
        {:def, 2} | (Kernel.__info__(:functions) ++ Kernel.__info__(:macros)) -- imported
      ])

    quote do
      import Kernel, except: unquote(except)
      import Causeway.Instrument.Def, only: [def: 2], warn: false
      require Causeway.Instrument.Def
      Module.register_attribute(__MODULE__, :trace, accumulate: false)
      Module.register_attribute(__MODULE__, :causeway_traced, accumulate: true)
      # {name, arity, file, line} of each public function's first clause:
      # Causeway.Event shows it for the function's entries
      Module.register_attribute(__MODULE__, :causeway_locations, accumulate: true, persist: true)
      Module.put_attribute(__MODULE__, :causeway_instrument, unquote(opts[:only]))
      @on_definition Causeway.Instrument
      # a plain copy of each wrapped body, run when nothing records
      require Causeway.Instrument.Dual

      unless {:core_transform, Causeway.Instrument.Dual} in List.wrap(@compile),
        do: @compile({:core_transform, Causeway.Instrument.Dual})
    end
  end

  defp validate!(opts, env) do
    unless Keyword.keyword?(opts) do
      compile_error!(env, "use Causeway.Instrument expects a keyword list, got: #{inspect(opts)}")
    end

    case Keyword.keys(opts) -- [:only] do
      [] ->
        :ok

      unknown ->
        compile_error!(
          env,
          "unknown option#{if length(unknown) > 1, do: "s"} for use Causeway.Instrument: " <>
            "#{Enum.map_join(unknown, ", ", &inspect/1)} (known: :only)"
        )
    end

    only = Keyword.get(opts, :only, :all)

    unless only in [:all, :tagged] do
      compile_error!(
        env,
        "use Causeway.Instrument, only: must be :all or :tagged, got: #{inspect(only)}"
      )
    end

    [only: only]
  end

  defp compile_error!(env, message),
    do: raise(CompileError, file: env.file, line: env.line, description: message)

  @doc false
  # `@trace true` tags the next definition only; a tagged bodiless head
  # (`def f(a, b \\ 1)`) tags the clauses that follow it.
  def __on_definition__(env, kind, name, args, _guards, _body) do
    if kind == :def do
      arity = length(args)
      known = Module.get_attribute(env.module, :causeway_locations)

      unless Enum.any?(known, &match?({^name, ^arity, _, _}, &1)),
        do:
          Module.put_attribute(
            env.module,
            :causeway_locations,
            {name, arity, Path.relative_to_cwd(env.file), env.line}
          )
    end

    if Module.get_attribute(env.module, :trace) != nil do
      fa = {name, length(args)}

      if kind == :def and Module.get_attribute(env.module, :trace) == true and
           fa not in Module.get_attribute(env.module, :causeway_traced),
         do: Module.put_attribute(env.module, :causeway_traced, fa)

      Module.delete_attribute(env.module, :trace)
    end
  end
end
