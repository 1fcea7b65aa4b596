defmodule Causeway.Instrument.Dual do
  @moduledoc false
  # The plain copy of an instrumented body, for when nothing records: a
  # Core Erlang transform (`@compile {:core_transform, ...}`, which
  # `use Causeway.Instrument` adds) run by the Erlang compiler after the
  # module's Elixir code has been expanded and translated. Each wrapped
  # body that `Causeway.Instrument.Rewrite` made,
  #
  #     let <CallId> = case Causeway.Switch.On:on?() of ... (the entry)
  #     in  [let <V> =] try Body' of ... catch ... (the exit, or the exception)
  #         [in case V of {'$causeway_tail', I, Args...} -> exit; Call_I ...]
  #
  # becomes
  #
  #     case Causeway.Switch.On:on?() of
  #       false -> Body            (Body' with each tail tuple made its call again)
  #       _     -> the wrapped body, unchanged
  #
  # so that with no instance running an instrumented function costs a remote
  # call of a constant function over the plain one: no `try`, no tail tuple,
  # no checks of a call id. `Body` is the plain body exactly (its lines, its
  # tail calls as tail calls): the stack traces, catch level and exceptions
  # of that branch are those of the uninstrumented module. (The function's
  # stack frame is allocated before the switch is asked, once for both
  # branches: a frame can be a few words bigger than the plain one's.)
  #
  # Where the body cannot raise, the compiler has removed the `try` before
  # this runs (the body's value, then the reports); a GenServer callback
  # that handles a message has the message's report and a `try ... after`
  # around all this, and the switch is then asked before them (see
  # `received/1`).
  #
  # A body that defines a fun or a local function (a `fn`, a capture, a
  # comprehension: anything the compiler lifts into a named local function,
  # `-f/1-fun-0-`) is left alone: a second copy would give its funs other
  # names (numbered in order of appearance), and the stack traces of the
  # two branches would differ. So is anything that does not have exactly
  # the shape above. Leaving a body alone is always correct, only slower.

  @switch :"Elixir.Causeway.Switch.On"
  @raise {:"Elixir.Causeway.Instrument.Rewrite", :__raise__}
  @tail :"$causeway_tail"
  @receive {:"Elixir.Causeway.Runtime", :message_receive}
  @handled {:"Elixir.Causeway.Runtime", :message_handled}
  @caller {:"Elixir.Causeway.Instrument.Otp", :__caller__}
  @statem_event {:"Elixir.Causeway.Instrument.Otp", :__statem_event__}
  @reports for f <- [:__report_state__, :__statem_init__, :__statem_result__],
               do: {:"Elixir.Causeway.Instrument.Otp", f}

  @doc false
  # (never in the way of a compile: whatever goes wrong here, the module is
  # compiled as Elixir made it)
  def core_transform(module, _options) do
    defs =
      for {name, fun} <- :cerl.module_defs(module) do
        {name, :cerl_trees.map(&dual/1, fun)}
      end

    :cerl.update_c_module(
      module,
      :cerl.module_name(module),
      :cerl.module_exports(module),
      :cerl.module_attrs(module),
      defs
    )
  rescue
    _ -> module
  end

  defp dual(node) do
    case :cerl.type(node) do
      :let -> entry(node)
      :seq -> received(node)
      _ -> node
    end
  end

  defp entry(node) do
    with [call_id] <- :cerl.let_vars(node),
         true <- switch_case?(:cerl.let_arg(node)),
         {:ok, plain} <- plain(:cerl.let_body(node), :cerl.var_name(call_id)),
         true <- liftless?(plain) do
      # the wrapped body's entry asks the switch's answer, not the switch again
      on = :cerl.c_var(:causeway_on)
      entry = :cerl.let_arg(node)
      entry = :cerl.update_c_case(entry, on, :cerl.case_clauses(entry))
      wrapped = :cerl.update_c_let(node, :cerl.let_vars(node), entry, :cerl.let_body(node))

      dispatch(plain, on, wrapped)
    else
      _ -> node
    end
  end

  defp dispatch(plain, on, wrapped) do
    :cerl.ann_c_case(
      [:causeway_dual, :compiler_generated],
      :cerl.ann_c_call([:compiler_generated], :cerl.c_atom(@switch), :cerl.c_atom(:on?), []),
      [
        :cerl.ann_c_clause([:compiler_generated], [:cerl.c_atom(false)], plain),
        :cerl.ann_c_clause([:compiler_generated], [on], wrapped)
      ]
    )
  end

  # A GenServer callback that handles a message, or a gen_statem's
  # `handle_event/4` (Otp's `received/2`):
  #
  #     do Runtime:message_receive(...)    (Otp:__statem_event__(...))
  #        try <the dispatch made above> of V -> do Runtime:message_handled() V
  #        catch ... -> do Runtime:message_handled() raise
  #
  # The dispatch moves out, over the report of the message: with nothing
  # recording, the callback is its plain body alone.
  defp received(node) do
    report = :cerl.seq_arg(node)
    try = :cerl.seq_body(node)

    with :try <- :cerl.type(try),
         true <- only_calls?(report, [@receive, @caller, @statem_event]),
         true <- calls_any?(report, [@receive, @statem_event]),
         true <- calls?(:cerl.try_handler(try), @handled),
         inner <- :cerl.try_arg(try),
         true <- :cerl.type(inner) == :case and :causeway_dual in :cerl.get_ann(inner),
         [off, on] <- :cerl.case_clauses(inner),
         [on_var] <- :cerl.clause_pats(on) do
      wrapped =
        :cerl.update_c_seq(
          node,
          report,
          :cerl.update_c_try(
            try,
            :cerl.clause_body(on),
            :cerl.try_vars(try),
            :cerl.try_body(try),
            :cerl.try_evars(try),
            :cerl.try_handler(try)
          )
        )

      dispatch(:cerl.clause_body(off), on_var, wrapped)
    else
      _ -> node
    end
  end

  # whether `node` calls `{m, f}`, and whether every call it makes is one of `mfs`
  defp calls?(node, mf), do: :cerl_trees.fold(&(&2 or call_of?(&1, mf)), false, node)

  defp only_calls?(node, mfs) do
    :cerl_trees.fold(
      fn n, acc ->
        acc and (:cerl.type(n) not in [:call, :apply] or Enum.any?(mfs, &call_of?(n, &1)))
      end,
      true,
      node
    )
  end

  defp call_of?(node, {m, f}) do
    :cerl.type(node) == :call and atom?(:cerl.call_module(node), m) and
      atom?(:cerl.call_name(node), f)
  end

  # The entry: `case Causeway.Switch.On:on?() of ...`.
  defp switch_case?(arg) do
    :cerl.type(arg) == :case and switch_call?(:cerl.case_arg(arg))
  end

  defp switch_call?(call), do: call_of?(call, {@switch, :on?}) and :cerl.call_args(call) == []

  # After the entry: a wrapped `try` (no call in tail position), or a `let`
  # of it and the `case` that makes the tail calls. Where the body cannot
  # raise, the compiler has already removed the `try`: a `let` of the body
  # itself, then the tail calls' `case` or the exit and the result.
  defp plain(rest, call_id) do
    case :cerl.type(rest) do
      :try ->
        if wrapper_try?(rest), do: no_tails(:cerl.try_arg(rest)), else: :error

      # a body the compiler resolved entirely (a value, or a tail call whose
      # operands are literals): the exit, then that
      :seq ->
        body = :cerl.seq_body(rest)

        if exit?(:cerl.seq_arg(rest), call_id) and not mentions?(body, call_id),
          do: no_tails(body),
          else: :error

      :let ->
        with [v] <- :cerl.let_vars(rest),
             {:ok, body, tried} <- tried(:cerl.let_arg(rest), call_id) do
          after_body(:cerl.let_body(rest), :cerl.var_name(v), body, tried, call_id)
        else
          _ -> :error
        end

      _ ->
        :error
    end
  end

  defp tried(arg, call_id) do
    cond do
      :cerl.type(arg) == :try ->
        if wrapper_try?(arg), do: {:ok, :cerl.try_arg(arg), true}, else: :error

      mentions?(arg, call_id) ->
        :error

      true ->
        {:ok, arg, false}
    end
  end

  defp after_body(next, v, body, tried, call_id) do
    case :cerl.type(next) do
      :case ->
        with true <- var?(:cerl.case_arg(next), v),
             {:ok, calls} <- tail_calls(:cerl.case_clauses(next), call_id) do
          no_tails(:cerl_trees.map(&untail(&1, calls), body))
        else
          _ -> :error
        end

      # (with a `try`, a body without tail calls is the `try` itself)
      :seq when not tried ->
        if reports_then?(next, v, call_id), do: no_tails(body), else: :error

      _ ->
        :error
    end
  end

  # The wrapper's catch re-raises through Rewrite.__raise__/3.
  defp wrapper_try?(try) do
    calls?(:cerl.try_handler(try), @raise)
  end

  # Each tail clause `{'$causeway_tail', I, Vars...} -> do Exit Call`: I to
  # {Vars, Call}; the last clause is the result's (`Result -> ...`).
  defp tail_calls([_ | _] = clauses, call_id) do
    {tails, [_result]} = Enum.split(clauses, -1)

    Enum.reduce_while(tails, {:ok, %{}}, fn clause, {:ok, acc} ->
      with [pat] <- :cerl.clause_pats(clause),
           {:ok, [tag, i | vars]} <- tuple_es(pat),
           true <- atom?(tag, @tail),
           true <- :cerl.is_c_int(i),
           true <- Enum.all?(vars, &(:cerl.type(&1) == :var)),
           true <- atom?(:cerl.clause_guard(clause), true),
           body <- :cerl.clause_body(clause),
           :seq <- :cerl.type(body),
           call <- :cerl.seq_body(body),
           false <- mentions?(call, call_id) do
        {:cont, {:ok, Map.put(acc, :cerl.int_val(i), {Enum.map(vars, &:cerl.var_name/1), call})}}
      else
        _ -> {:halt, :error}
      end
    end)
  end

  defp tail_calls([], _call_id), do: :error

  # `{'$causeway_tail', I, Args...}` back into the call it stands for.
  defp untail(node, calls) do
    with {:ok, [tag, i | args]} <- tuple_es(node),
         true <- atom?(tag, @tail),
         true <- :cerl.is_c_int(i),
         {:ok, {vars, call}} <- Map.fetch(calls, :cerl.int_val(i)),
         true <- length(vars) == length(args) do
      binding = Map.new(Enum.zip(vars, args))

      :cerl_trees.map(
        fn n ->
          if :cerl.type(n) == :var, do: Map.get(binding, :cerl.var_name(n), n), else: n
        end,
        call
      )
    else
      _ -> node
    end
  end

  # a tail tuple left over means the shape was not the expected one
  defp no_tails(body) do
    if :cerl_trees.fold(&(&2 or tail_tuple?(&1)), false, body), do: :error, else: {:ok, body}
  end

  defp tail_tuple?(node) do
    case tuple_es(node) do
      {:ok, [tag | _]} -> atom?(tag, @tail)
      _ -> false
    end
  end

  # a tuple's elements, whether it is built (`{'$causeway_tail', 1, X}`) or
  # a literal (`{'$causeway_tail', 1}`: a tail call whose operands are all
  # literals)
  defp tuple_es(node) do
    case :cerl.type(node) do
      :tuple ->
        {:ok, :cerl.tuple_es(node)}

      :literal ->
        case :cerl.concrete(node) do
          t when is_tuple(t) -> {:ok, t |> Tuple.to_list() |> Enum.map(&:cerl.abstract/1)}
          _ -> :error
        end

      _ ->
        :error
    end
  end

  # No fun and no letrec (a comprehension): what the compiler would lift
  # into a local function named after its place. The letrecs of `receive`
  # (annotated `letrec_goto`) become jumps inside the function, not
  # functions: their funs are not lifted and have no name.
  defp liftless?(body) do
    {funs, gotos, letrecs} =
      :cerl_trees.fold(
        fn node, {funs, gotos, letrecs} = acc ->
          case :cerl.type(node) do
            :fun ->
              {funs + 1, gotos, letrecs}

            :letrec ->
              if :letrec_goto in :cerl.get_ann(node),
                do: {funs, gotos + length(:cerl.letrec_defs(node)), letrecs},
                else: {funs, gotos, letrecs + 1}

            _ ->
              acc
          end
        end,
        {0, 0, 0},
        body
      )

    letrecs == 0 and funs == gotos
  end

  # The reports after a body (a state callback's state, the exit), then its
  # value `v`.
  defp reports_then?(node, v, call_id) do
    case :cerl.type(node) do
      :seq ->
        arg = :cerl.seq_arg(node)

        (exit?(arg, call_id) or (only_calls?(arg, @reports) and calls_any?(arg, @reports))) and
          reports_then?(:cerl.seq_body(node), v, call_id)

      :var ->
        :cerl.var_name(node) == v

      _ ->
        false
    end
  end

  defp calls_any?(node, mfs), do: Enum.any?(mfs, &calls?(node, &1))

  # the exit's report: `case CallId of ...` (`if call_id, do: ...`)
  defp exit?(node, call_id), do: :cerl.type(node) == :case and var?(:cerl.case_arg(node), call_id)

  defp mentions?(node, name) do
    :cerl_trees.fold(
      &(&2 or (:cerl.type(&1) == :var and :cerl.var_name(&1) == name)),
      false,
      node
    )
  end

  defp var?(node, name), do: :cerl.type(node) == :var and :cerl.var_name(node) == name

  defp atom?(node, atom), do: :cerl.is_c_atom(node) and :cerl.atom_val(node) == atom
end
