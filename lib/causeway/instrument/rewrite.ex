defmodule Causeway.Instrument.Rewrite do
  @moduledoc false
  # The code transformation behind `use Causeway.Instrument`: what one `def`
  # clause becomes. The clause keeps its name, heads, guards, defaults and
  # line metadata, and is defined at its own place by `Kernel.def/2`; only
  # its body changes (see `Causeway.Instrument` for the design):
  #
  #   * the head is not touched: the entry's arguments are rebuilt from the
  #     patterns (`capture/2`);
  #   * the body is handed to `Causeway.Instrument.Def.__body__/3`, a macro
  #     expanded by the compiler inside the function itself, where `body/4`
  #     below decides (with the module's attributes as they are at that
  #     clause) whether and how to wrap it;
  #   * a wrapped body reports its entry, evaluates inside a `try` everything
  #     that is not in tail position, and performs each call that is in tail
  #     position after the `try`, once its frame is closed: a tail call stays
  #     a tail call.

  alias Causeway.Instrument.Otp

  @tail :"$causeway_tail"

  # Kernel functions (called unqualified) and :erlang functions the BEAM runs
  # inline (guard BIFs and operators) or that never return: kept inside the
  # frame, the value they give (or raise) is recorded as the function's own.
  # Everything else in tail position is a real call, made as a tail call.
  @kernel_inline ~w(+ - * / == != === !== < > <= >= abs div rem elem hd tl length
                    map_size tuple_size byte_size bit_size node self round trunc not
                    is_atom is_binary is_bitstring is_boolean is_float is_function
                    is_integer is_list is_map is_map_key is_number is_pid is_port
                    is_reference is_tuple binary_part send throw exit ++ -- put_elem)a

  @erlang_inline ~w(+ - * / == /= =:= =/= < > =< >= abs div rem element hd tl length
                    map_size map_get tuple_size byte_size bit_size node self round trunc
                    not band bor bxor bnot bsl bsr is_atom is_binary is_bitstring
                    is_boolean is_float is_function is_integer is_list is_map is_map_key
                    is_number is_pid is_port is_reference is_tuple binary_part send
                    throw exit error raise ++ -- setelement)a

  # Names that are never wrapped (generated, or OTP callbacks whose wrapping
  # would only add noise).
  @internal [:child_spec, :code_change, :terminate, :format_status, :callback_mode]

  ## def/2 of an instrumented module (module-body expansion time)

  @doc false
  def define(call, expr) do
    if unquotes?(call) or unquotes?(expr) do
      # unquote fragments are only known when the module body runs: rewrite
      # then, and hand the result to Kernel.def as fragments again
      c = Macro.var(:causeway_call, __MODULE__)
      e = Macro.var(:causeway_expr, __MODULE__)

      quote do
        {unquote(c), unquote(e)} =
          Causeway.Instrument.Rewrite.clause(
            unquote(Macro.escape(call, unquote: true)),
            unquote(Macro.escape(expr, unquote: true))
          )

        Kernel.def(unquote({:unquote, [], [c]}), unquote({:unquote, [], [e]}))
      end
    else
      {call, expr} = clause(call, expr)
      quote do: Kernel.def(unquote(call), unquote(expr))
    end
  end

  defp unquotes?(ast) do
    {_, found} =
      Macro.prewalk(ast, false, fn
        {:quote, _, _} = node, acc -> {node, acc}
        {u, _, [_]} = node, _ when u in [:unquote, :unquote_splicing] -> {node, true}
        node, acc -> {node, acc}
      end)

    found
  end

  @doc false
  # One clause: `{call, expr}` for Kernel.def/2.
  def clause(call, expr) do
    with true <- Keyword.keyword?(expr) and Keyword.has_key?(expr, :do),
         {:ok, call, name, meta, vars} <- head_args(call, used_vars(call, expr)) do
      body =
        case expr do
          [do: body] -> body
          _ -> {:try, [origin: :def] ++ meta, [expr]}
        end

      line = Keyword.take(meta, [:line])
      wrapped = {{:., line, [Causeway.Instrument.Def, :__body__]}, line, [name, vars, body]}
      {call, [do: wrapped]}
    else
      _ -> {call, expr}
    end
  end

  defp head_args({:when, m, [inner, guards]}, used) do
    with {:ok, inner, name, meta, vars} <- head_args(inner, used),
         do: {:ok, {:when, m, [inner, guards]}, name, meta, vars}
  end

  defp head_args({name, meta, args}, used) when is_atom(name) and is_list(args) do
    values =
      Enum.map(args, fn
        {:\\, _, [pattern, _default]} -> capture(pattern, used)
        pattern -> capture(pattern, used)
      end)

    {:ok, {name, meta, args}, name, meta, values}
  end

  defp head_args({name, meta, ctx}, _used) when is_atom(name) and is_atom(ctx),
    do: {:ok, {name, meta, ctx}, name, meta, []}

  defp head_args(_, _), do: :error

  # The argument as the entry reports it, rebuilt from its pattern: the head
  # stays exactly as written (a FunctionClauseError lists the clauses as
  # written, an unused variable is still reported as unused). A variable the
  # clause uses (or an underscored one), a literal, and tuples, lists, `<>`
  # and maps of those are rebuilt (a map or struct pattern gives a map of
  # the keys it matched); what the pattern does not bind (`_`, an unused
  # variable, a binary with sizes) is the hole `:_`.
  defp capture(pattern, used) do
    case rebuild(pattern, used) do
      {:ok, value} -> value
      :error -> :_
    end
  end

  defp rebuild({:_, _, ctx}, _used) when is_atom(ctx), do: :error

  defp rebuild({name, m, ctx} = var, used) when is_atom(name) and is_atom(ctx) do
    cond do
      String.starts_with?(Atom.to_string(name), "_") -> {:ok, {name, [generated: true] ++ m, ctx}}
      MapSet.member?(used, {name, ctx}) -> {:ok, var}
      true -> :error
    end
  end

  defp rebuild(literal, _used)
       when is_atom(literal) or is_number(literal) or is_binary(literal),
       do: {:ok, literal}

  defp rebuild(list, used) when is_list(list), do: rebuild_all(list, used, & &1)

  defp rebuild({a, b}, used), do: rebuild_all([a, b], used, fn [a, b] -> {a, b} end)

  defp rebuild({:{}, m, elems}, used), do: rebuild_all(elems, used, &{:{}, m, &1})

  defp rebuild({:|, m, [h, t]}, used), do: rebuild_all([h, t], used, &{:|, m, &1})

  defp rebuild({:<>, m, [l, r]}, used), do: rebuild_all([l, r], used, &{:<>, m, &1})

  defp rebuild({:-, _, [n]} = neg, _used) when is_number(n), do: {:ok, neg}

  defp rebuild({:%{}, m, pairs}, used) when is_list(pairs) do
    if Enum.all?(pairs, &match?({k, _} when is_atom(k) or is_number(k) or is_binary(k), &1)) do
      {keys, values} = Enum.unzip(pairs)
      rebuild_all(values, used, &{:%{}, m, Enum.zip(keys, &1)})
    else
      :error
    end
  end

  # a struct pattern gives a plain map of the fields it matched (a struct
  # with fields missing could not be inspected)
  defp rebuild({:%, _, [_struct, {:%{}, m, pairs}]}, used), do: rebuild({:%{}, m, pairs}, used)

  # `pattern = var` (either way round): the variable, whole
  defp rebuild({:=, _, [l, r]}, used) do
    case {var_value(l, used), var_value(r, used)} do
      {{:ok, v}, _} -> {:ok, v}
      {_, {:ok, v}} -> {:ok, v}
      _ -> with :error <- rebuild(l, used), do: rebuild(r, used)
    end
  end

  defp rebuild(_, _), do: :error

  # the parts that cannot be rebuilt are holes (`:_`)
  defp rebuild_all(parts, used, build) do
    {:ok, build.(Enum.map(parts, &capture(&1, used)))}
  end

  defp var_value({name, _, ctx} = var, used) when is_atom(name) and is_atom(ctx),
    do: rebuild(var, used)

  defp var_value(_, _), do: :error

  # The variables (name and context) the clause's guards and body mention.
  defp used_vars(call, expr) do
    guards =
      case call do
        {:when, _, [_, guards]} -> guards
        _ -> nil
      end

    {_, used} =
      Macro.prewalk({guards, expr}, MapSet.new(), fn
        {name, _, ctx} = var, acc when is_atom(name) and is_atom(ctx) ->
          {var, MapSet.put(acc, {name, ctx})}

        node, acc ->
          {node, acc}
      end)

    used
  end

  ## the body (expanded inside the function)

  @doc false
  def body(name, vars, body, env) do
    module = env.module
    arity = length(vars)

    if traced?(module, name, arity) do
      case Otp.kind(module, name, arity) do
        :plain -> plain(module, name, vars, body, env)
        kind -> Otp.wrap(kind, module, name, vars, body)
      end
    else
      body
    end
  end

  defp traced?(module, name, arity) do
    mode = Module.get_attribute(module, :causeway_instrument)
    s = Atom.to_string(name)

    cond do
      mode == nil or name in @internal or String.starts_with?(s, "__") ->
        false

      mode == :all ->
        true

      Module.get_attribute(module, :trace) == true ->
        traced = Module.get_attribute(module, :causeway_traced)

        unless {name, arity} in traced,
          do: Module.put_attribute(module, :causeway_traced, {name, arity})

        true

      true ->
        {name, arity} in Module.get_attribute(module, :causeway_traced)
    end
  end

  @doc false
  # The entry, `body` inside a try, and its reported exit or exception: the
  # shape every wrapped body shares (the OTP callbacks add their reports).
  def call(module, name, vars, body, on_result \\ fn _ -> nil end) do
    result = Macro.var(:result, __MODULE__)

    quote do
      call_id = unquote(entry(module, name, vars))

      try do
        unquote(body)
      catch
        kind, reason ->
          if call_id,
            do: Causeway.Native.rt_function_exit(call_id, {:exception, kind, reason})

          Causeway.Instrument.Rewrite.__raise__(kind, reason, __STACKTRACE__)
      else
        unquote(result) ->
          unquote(on_result.(result))
          if call_id, do: Causeway.Native.rt_function_exit(call_id, unquote(result))
          unquote(result)
      end
    end
  end

  # The entry's report: its call id, or nil when nothing was recorded. The
  # switch first (a constant function: see Causeway.Switch), so that with
  # no instance running no NIF is called and no argument list is built.
  defp entry(module, name, vars) do
    quote generated: true do
      if Causeway.Switch.On.on?(),
        do: Causeway.Native.rt_function_entry(unquote(module), unquote(name), unquote(vars))
    end
  end

  @doc false
  # Re-raises with the stacktrace as given. Called with `__STACKTRACE__` from
  # the wrapper's catch: there, `:erlang.raise/3` would be compiled to a raw
  # re-raise, which drops the location of a FunctionClauseError's frame.
  def __raise__(kind, reason, stacktrace), do: :erlang.raise(kind, reason, stacktrace)

  defp plain(module, name, vars, body, env) do
    # (the body's tail positions come back expanded: each macro there runs once)
    case tail(body, env, []) do
      {body, []} ->
        call(module, name, vars, body)

      {body, leaves} ->
        call_id = Macro.var(:call_id, __MODULE__)
        clauses = Enum.flat_map(Enum.reverse(leaves), &leaf_clause(&1, call_id))

        result =
          quote generated: true do
            result ->
              if unquote(call_id), do: Causeway.Native.rt_function_exit(unquote(call_id), result)
              result
          end

        quote do
          unquote(call_id) = unquote(entry(module, name, vars))

          case (try do
                  unquote(body)
                catch
                  kind, reason ->
                    if unquote(call_id),
                      do:
                        Causeway.Native.rt_function_exit(
                          unquote(call_id),
                          {:exception, kind, reason}
                        )

                    Causeway.Instrument.Rewrite.__raise__(kind, reason, __STACKTRACE__)
                end) do
            unquote(clauses ++ result)
          end
        end
    end
  end

  # A tail call made after its caller's frame is closed: the exit is
  # recorded with `{:tail_call, target}` as its result.
  defp leaf_clause({i, vars, target, call}, call_id) do
    quote generated: true do
      {unquote(@tail), unquote(i), unquote_splicing(vars)} ->
        if unquote(call_id),
          do: Causeway.Native.rt_function_exit(unquote(call_id), {:tail_call, unquote(target)})

        unquote(call)
    end
  end

  ## tail positions

  # Rewrites `ast` (in tail position) so that each call in tail position
  # becomes `{:"$causeway_tail", i, values...}`, its operands evaluated in
  # place; returns the rewritten ast and the leaves `{i, vars, target, call}`.
  defp tail(ast, env, leaves) do
    case expand(ast, env) do
      {:__block__, m, [_ | _] = exprs} ->
        {last, leaves} = tail(List.last(exprs), env, leaves)
        {{:__block__, m, List.replace_at(exprs, -1, last)}, leaves}

      {:case, m, [expr, [do: clauses]]} ->
        {clauses, leaves} = clauses(clauses, env, leaves)
        {{:case, m, [expr, [do: clauses]]}, leaves}

      {:cond, m, [[do: clauses]]} ->
        {clauses, leaves} = clauses(clauses, env, leaves)
        {{:cond, m, [[do: clauses]]}, leaves}

      {:receive, m, [opts]} ->
        {opts, leaves} = options(opts, [:do, :after], env, leaves)
        {{:receive, m, [opts]}, leaves}

      {:try, m, [opts]} ->
        if Keyword.has_key?(opts, :after) do
          {{:try, m, [opts]}, leaves}
        else
          {opts, leaves} = options(opts, [:rescue, :catch, :else], env, leaves)
          {{:try, m, [opts]}, leaves}
        end

      {:with, m, args} when args != [] ->
        case List.last(args) do
          opts when is_list(opts) ->
            {opts, leaves} =
              Enum.map_reduce(opts, leaves, fn
                {:do, body}, acc ->
                  {body, acc} = tail(body, env, acc)
                  {{:do, body}, acc}

                {:else, clauses}, acc ->
                  {clauses, acc} = clauses(clauses, env, acc)
                  {{:else, clauses}, acc}

                other, acc ->
                  {other, acc}
              end)

            {{:with, m, List.replace_at(args, -1, opts)}, leaves}

          _ ->
            {{:with, m, args}, leaves}
        end

      {{:., dm, [:erlang, op]}, m, [left, right]} when op in [:andalso, :orelse] ->
        {right, leaves} = tail(right, env, leaves)
        {{{:., dm, [:erlang, op]}, m, [left, right]}, leaves}

      expanded ->
        case callee(expanded, env) do
          nil -> {expanded, leaves}
          {fixed, operands, rebuild, target} -> leaf(fixed, operands, rebuild, target, leaves)
        end
    end
  end

  # A macro in tail position expanded as the compiler would: what it returns
  # without a line gets the line of its call (Macro.expand/2 leaves it out).
  defp expand({_, meta, _} = ast, env) when is_list(meta) do
    line = Keyword.get(meta, :line, env.line)

    case Macro.expand(ast, %{env | line: line}) do
      ^ast -> ast
      expanded -> linify(expanded, line)
    end
  end

  defp expand(ast, env), do: Macro.expand(ast, env)

  defp linify(ast, line) do
    Macro.prewalk(ast, fn
      {form, meta, args} when is_list(meta) -> {form, Keyword.put_new(meta, :line, line), args}
      other -> other
    end)
  end

  defp options(opts, keys, env, leaves) do
    Enum.map_reduce(opts, leaves, fn
      {key, clauses}, acc when is_list(clauses) ->
        if key in keys do
          {clauses, acc} = clauses(clauses, env, acc)
          {{key, clauses}, acc}
        else
          {{key, clauses}, acc}
        end

      other, acc ->
        {other, acc}
    end)
  end

  defp clauses(clauses, env, leaves) when is_list(clauses) do
    Enum.map_reduce(clauses, leaves, fn
      {:->, m, [pats, body]}, acc ->
        {body, acc} = tail(body, env, acc)
        {{:->, m, [pats, body]}, acc}

      other, acc ->
        {other, acc}
    end)
  end

  defp clauses(other, _env, leaves), do: {other, leaves}

  # Literal operands stay in the call as written (the compiler still sees
  # them: its warnings about a call that cannot succeed are the plain ones);
  # the others are evaluated in place and passed out in the tuple.
  defp leaf(_fixed, operands, rebuild, target, leaves) do
    i = length(leaves) + 1

    slots =
      operands
      |> Enum.with_index(1)
      |> Enum.map(fn {operand, j} ->
        if Macro.quoted_literal?(operand),
          do: {:literal, operand},
          else: {:var, operand, Macro.var(:"tail#{i}_#{j}", __MODULE__)}
      end)

    passed = for {:var, operand, var} <- slots, do: {operand, var}
    vars = Enum.map(passed, &elem(&1, 1))

    in_call =
      Enum.map(slots, fn
        {:literal, l} -> l
        {:var, _, var} -> var
      end)

    target =
      case target do
        {:dynamic, f, a} -> quote(do: {unquote(hd(in_call)), unquote(f), unquote(a)})
        static -> Macro.escape(static)
      end

    tagged = {:{}, [], [@tail, i | Enum.map(passed, &elem(&1, 0))]}
    {tagged, [{i, vars, target, rebuild.(in_call)} | leaves]}
  end

  # What a call in tail position calls: nil for a value (not a call, or one
  # the BEAM runs inline); else the operands to evaluate before the frame is
  # closed, how to rebuild the call from them, and its target for the record.
  defp callee({:super, m, args}, env) when is_list(args) do
    {name, _} = env.function
    {:super, args, fn vars -> {:super, m, vars} end, {env.module, name, length(args)}}
  end

  defp callee({name, m, args}, env) when is_atom(name) and is_list(args) do
    arity = length(args)

    cond do
      special?(name) ->
        nil

      name in @kernel_inline and Macro.Env.lookup_import(env, {name, arity}) == [function: Kernel] ->
        nil

      true ->
        module =
          case Macro.Env.lookup_import(env, {name, arity}) do
            [{:function, mod} | _] -> mod
            _ -> env.module
          end

        {name, args, fn vars -> {name, m, vars} end, {module, name, arity}}
    end
  end

  defp callee({{:., dm, [mod, fun]}, m, args}, env) when is_atom(fun) and is_list(args) do
    mod = expand(mod, env)
    arity = length(args)

    cond do
      Keyword.get(m, :no_parens) == true and args == [] ->
        nil

      mod == :erlang and fun in @erlang_inline ->
        nil

      mod == Kernel and fun in @kernel_inline ->
        nil

      is_atom(mod) ->
        {fun, args, fn vars -> {{:., dm, [mod, fun]}, m, vars} end, {mod, fun, arity}}

      true ->
        {fun, [mod | args], fn [mv | vars] -> {{:., dm, [mv, fun]}, m, vars} end,
         {:dynamic, fun, arity}}
    end
  end

  defp callee({{:., dm, [fun]}, m, args}, _env) when is_list(args) do
    {:fn, [fun | args], fn [fv | vars] -> {{:., dm, [fv]}, m, vars} end, {:fn, length(args)}}
  end

  defp callee(_, _), do: nil

  @special ~w(__block__ case cond receive try with fn for quote unquote unquote_splicing
              %{} {} % <<>> = ^ :: & . __aliases__ __MODULE__ __ENV__ __DIR__ __CALLER__
              __STACKTRACE__ import require alias super)a
  defp special?(name), do: name in @special
end
