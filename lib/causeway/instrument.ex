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

  Each wrapped function reports its entry (with arguments), its exit (with the
  return value) or the exception it raised, threw or exited with
  (`{:exception, kind, reason}`), then re-raises it with its original
  stacktrace: results and exceptions are exactly what the function gives
  without instrumentation. Guards, multiple clauses and default arguments are
  untouched (the original clauses are kept and called through `super`).

  In a module with `@behaviour GenServer` (put `use Causeway.Instrument` after
  `use GenServer`), `handle_call/3`, `handle_cast/2` and `handle_info/2` also
  report the message as a `message_receive` and, when the state changed, a
  `state_change` caused by that message; `init/1` reports the initial state as a
  `state_change` from `nil`.

  Recursion goes through the wrapper, so every recursive call is recorded and a
  tail-recursive loop is no longer constant-stack while instrumented: tag
  (`only: :tagged`) the entry point of long loops instead.

  When no Causeway instance is running, a wrapped call costs one
  `:persistent_term` lookup more than the plain one.
  """

  @doc false
  defmacro __using__(opts) do
    only = Keyword.get(opts, :only, :all)

    unless only in [:all, :tagged] do
      raise ArgumentError,
            "use Causeway.Instrument, only: must be :all or :tagged, got: #{inspect(only)}"
    end

    quote do
      Module.register_attribute(__MODULE__, :trace, accumulate: false)
      Module.register_attribute(__MODULE__, :causeway_traced, accumulate: true)
      Module.put_attribute(__MODULE__, :causeway_instrument, unquote(only))
      @on_definition Causeway.Instrument
      @before_compile Causeway.Instrument
    end
  end

  @doc false
  def __on_definition__(env, kind, name, args, _guards, _body) do
    mode = Module.get_attribute(env.module, :causeway_instrument)
    tagged = Module.get_attribute(env.module, :trace)

    if tagged != nil, do: Module.delete_attribute(env.module, :trace)

    if kind == :def and not internal?(name) and (mode == :all or tagged == true) do
      fa = {name, length(args)}

      unless fa in Module.get_attribute(env.module, :causeway_traced),
        do: Module.put_attribute(env.module, :causeway_traced, fa)
    end
  end

  defp internal?(name) do
    s = Atom.to_string(name)

    String.starts_with?(s, "__") or
      name in [:child_spec, :code_change, :terminate, :format_status]
  end

  @doc false
  defmacro __before_compile__(env) do
    traced = env.module |> Module.get_attribute(:causeway_traced) |> Enum.reverse()
    behaviours = Module.get_attribute(env.module, :behaviour) || []
    genserver? = GenServer in behaviours

    wrappers =
      for {name, arity} <- traced, Module.defines?(env.module, {name, arity}, :def) do
        args = Macro.generate_arguments(arity, __MODULE__)
        kind = if genserver?, do: callback_kind(name, arity), else: :plain
        body = wrap(kind, env.module, name, args)

        quote do
          defoverridable [{unquote(name), unquote(arity)}]
          def unquote(name)(unquote_splicing(args)), do: unquote(body)
        end
      end

    quote do
      (unquote_splicing(wrappers))
    end
  end

  defp callback_kind(:handle_call, 3), do: :handle_call
  defp callback_kind(:handle_cast, 2), do: :handle_cast
  defp callback_kind(:handle_info, 2), do: :handle_info
  defp callback_kind(:init, 1), do: :init
  defp callback_kind(_, _), do: :plain

  # The NIFs are called directly (what `Causeway.Runtime.function_entry/3`
  # and `function_exit/2` do after their guards): module and name are atoms
  # here, the arguments a list, and an exit is reported only for a captured
  # entry (a call id, not `nil`). One remote call less on each side.
  defp call(module, name, args) do
    quote do
      call_id = Causeway.Native.rt_function_entry(unquote(module), unquote(name), unquote(args))

      try do
        super(unquote_splicing(args))
      catch
        kind, reason ->
          if call_id,
            do: Causeway.Native.rt_function_exit(call_id, {:exception, kind, reason})

          :erlang.raise(kind, reason, Causeway.Instrument.__stacktrace__(__STACKTRACE__))
      else
        result ->
          if call_id, do: Causeway.Native.rt_function_exit(call_id, result)
          result
      end
    end
  end

  defp wrap(:plain, module, name, args), do: call(module, name, args)

  defp wrap(:init, module, name, args) do
    quote do
      result = unquote(call(module, name, args))
      Causeway.Instrument.__report_state__(nil, result, 1)
      result
    end
  end

  defp wrap(kind, module, name, args) do
    [msg | _] = args
    state = List.last(args)

    from =
      if kind == :handle_call do
        [_, from, _] = args
        quote(do: Causeway.Instrument.__caller__(unquote(from)))
      else
        nil
      end

    quote do
      Causeway.Runtime.message_receive(unquote(from), unquote(msg))
      result = unquote(call(module, name, args))

      Causeway.Instrument.__report_state__(
        unquote(state),
        result,
        unquote(if kind == :handle_call, do: 2, else: 1)
      )

      Causeway.Runtime.message_handled()
      result
    end
  end

  @doc false
  # The stacktrace as the uninstrumented function would have it: the original
  # clauses are named `f (overridable N)` by defoverridable, and the wrapper
  # adds a frame of the same function right under them.
  def __stacktrace__(stacktrace) do
    stacktrace
    |> Enum.map(fn
      {m, f, a, loc} when is_atom(f) -> {m, original_name(f), a, loc}
      frame -> frame
    end)
    |> dedup_wrapper_frames()
  end

  defp original_name(f) do
    name = Atom.to_string(f)

    case :binary.match(name, " (overridable ") do
      {pos, _} -> String.to_existing_atom(binary_part(name, 0, pos))
      :nomatch -> f
    end
  end

  defp dedup_wrapper_frames([{m, f, a, _} = frame, {m, f, a2, _} | rest])
       when a == a2 or (is_list(a) and length(a) == a2) or (is_list(a2) and length(a2) == a),
       do: dedup_wrapper_frames([frame | rest])

  defp dedup_wrapper_frames([frame | rest]), do: [frame | dedup_wrapper_frames(rest)]
  defp dedup_wrapper_frames([]), do: []

  @doc false
  def __caller__({pid, _tag}) when is_pid(pid), do: pid
  def __caller__(_), do: nil

  @doc false
  # Reports a state change if the callback's result carries a state that differs
  # from `old`. `pos` is where the state sits in {:reply, r, s} (2) or
  # {:noreply, s} / {:ok, s} (1).
  def __report_state__(old, result, pos) do
    case new_state(result, pos) do
      {:ok, new} when new !== old -> Causeway.Runtime.state_change(old, new)
      _ -> :ok
    end
  end

  defp new_state({:ok, s}, _), do: {:ok, s}
  defp new_state({:ok, s, _}, _), do: {:ok, s}
  defp new_state({:reply, _, s}, _), do: {:ok, s}
  defp new_state({:reply, _, s, _}, _), do: {:ok, s}
  defp new_state({:noreply, s}, _), do: {:ok, s}
  defp new_state({:noreply, s, _}, _), do: {:ok, s}
  defp new_state({:stop, _, _, s}, _), do: {:ok, s}
  defp new_state({:stop, _, s}, _), do: {:ok, s}
  defp new_state(_, _), do: :none
end
