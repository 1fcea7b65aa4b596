defmodule Causeway.Instrument.Otp do
  @moduledoc false
  # What `use Causeway.Instrument` adds to OTP callbacks: in a GenServer,
  # `handle_call/3`, `handle_cast/2` and `handle_info/2` report their message
  # as a `message_receive`, and every callback that returns a state
  # (`init/1`, `handle_*`, `handle_continue/2`) reports a `state_change` when
  # it differs from the state it was given. In a `:gen_statem`, `init/1`,
  # `handle_event/4` and the state functions (`state(event_type, content,
  # data)`) do the same with the state `{state_name, data}`; each event is a
  # `message_receive` of `{event_type, content}`.
  #
  # The state is reported before the callback's exit, so a change is caused
  # by the message being handled, or else by the callback's own call.

  alias Causeway.Instrument.Rewrite

  @doc false
  def kind(module, name, arity) do
    behaviours = Module.get_attribute(module, :behaviour) || []

    cond do
      GenServer in behaviours -> genserver(name, arity)
      :gen_statem in behaviours -> statem(name, arity)
      true -> :plain
    end
  end

  defp genserver(:init, 1), do: :init
  defp genserver(:handle_call, 3), do: :handle_call
  defp genserver(:handle_cast, 2), do: :handle_cast
  defp genserver(:handle_info, 2), do: :handle_info
  defp genserver(:handle_continue, 2), do: :handle_continue
  defp genserver(_, _), do: :plain

  defp statem(:init, 1), do: :statem_init
  defp statem(:handle_event, 4), do: :handle_event
  defp statem(_, 3), do: :state_function
  defp statem(_, _), do: :plain

  @doc false
  def wrap(:init, module, name, vars, body) do
    Rewrite.call(module, name, vars, body, report(nil, 1))
  end

  def wrap(:handle_continue, module, name, [_, state] = vars, body) do
    Rewrite.call(module, name, vars, body, report(state, 1))
  end

  def wrap(kind, module, name, vars, body)
      when kind in [:handle_call, :handle_cast, :handle_info] do
    [msg | _] = vars
    state = List.last(vars)

    {from, pos} =
      case vars do
        [_, from, _] when kind == :handle_call ->
          {quote(do: Causeway.Instrument.Otp.__caller__(unquote(from))), 2}

        _ ->
          {nil, 1}
      end

    received(
      quote(do: Causeway.Runtime.message_receive(unquote(from), unquote(msg))),
      Rewrite.call(module, name, vars, body, report(state, pos))
    )
  end

  def wrap(:statem_init, module, name, vars, body) do
    on_result = &quote(do: Causeway.Instrument.Otp.__statem_init__(unquote(&1)))
    Rewrite.call(module, name, vars, body, on_result)
  end

  def wrap(:handle_event, module, name, [type, content, state, data] = vars, body) do
    on_result =
      &quote do
        Causeway.Instrument.Otp.__statem_result__(unquote(state), unquote(data), unquote(&1))
      end

    received(
      quote(do: Causeway.Instrument.Otp.__statem_event__(unquote(type), unquote(content))),
      Rewrite.call(module, name, vars, body, on_result)
    )
  end

  def wrap(:state_function, module, name, [type, content, data] = vars, body) do
    # any arity-3 function of a :gen_statem module may be a state function:
    # it is one when called with an event type
    event = Macro.var(:event?, __MODULE__)

    on_result =
      &quote do
        if unquote(event),
          do: Causeway.Instrument.Otp.__statem_result__(unquote(name), unquote(data), unquote(&1))
      end

    quote do
      unquote(event) = Causeway.Instrument.Otp.__statem_event__(unquote(type), unquote(content))

      try do
        unquote(Rewrite.call(module, name, vars, body, on_result))
      after
        if unquote(event), do: Causeway.Runtime.message_handled()
      end
    end
  end

  defp report(state, pos) do
    fn result ->
      quote(
        do:
          Causeway.Instrument.Otp.__report_state__(unquote(state), unquote(result), unquote(pos))
      )
    end
  end

  # the message is handled once the callback returned or raised
  defp received(receive, call) do
    quote do
      unquote(receive)

      try do
        unquote(call)
      after
        Causeway.Runtime.message_handled()
      end
    end
  end

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

  @event_types [:cast, :info, :timeout, :state_timeout, :internal, :enter]

  @doc false
  # Reports a gen_statem event as a message_receive; false if `type` is not an
  # event type (the function was called as a plain function).
  def __statem_event__({:call, {pid, _tag}} = type, content) when is_pid(pid) do
    Causeway.Runtime.message_receive(pid, {type, content})
    true
  end

  def __statem_event__({:timeout, _name} = type, content) do
    Causeway.Runtime.message_receive(nil, {type, content})
    true
  end

  def __statem_event__(type, content) when type in @event_types do
    Causeway.Runtime.message_receive(nil, {type, content})
    true
  end

  def __statem_event__(_type, _content), do: false

  @doc false
  def __statem_init__({:ok, state, data}), do: Causeway.Runtime.state_change(nil, {state, data})

  def __statem_init__({:ok, state, data, _actions}),
    do: Causeway.Runtime.state_change(nil, {state, data})

  def __statem_init__(_), do: :ok

  @doc false
  # Reports the state change a state callback's result makes from {state, data}.
  def __statem_result__(state, data, result) do
    case statem_next(state, result) do
      {:ok, next_state, next_data} when next_state !== state or next_data !== data ->
        Causeway.Runtime.state_change({state, data}, {next_state, next_data})

      _ ->
        :ok
    end
  end

  defp statem_next(_, {:next_state, s, d}), do: {:ok, s, d}
  defp statem_next(_, {:next_state, s, d, _}), do: {:ok, s, d}
  defp statem_next(s, {:keep_state, d}), do: {:ok, s, d}
  defp statem_next(s, {:keep_state, d, _}), do: {:ok, s, d}
  defp statem_next(s, {:repeat_state, d}), do: {:ok, s, d}
  defp statem_next(s, {:repeat_state, d, _}), do: {:ok, s, d}
  defp statem_next(s, {:stop, _, d}), do: {:ok, s, d}
  defp statem_next(s, {:stop_and_reply, _, _, d}), do: {:ok, s, d}
  defp statem_next(_, _), do: :none
end
