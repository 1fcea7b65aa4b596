defmodule Causeway.Tracer.Trigger do
  @moduledoc """
  The triggers of a triggered trace session, `Causeway.trace(target,
  start_on: trigger)`: the session records nothing until its trigger fires,
  then follows the process it fired in (see `Causeway.Tracer`).

      {:ok, s} = Causeway.trace(MyApp.Cart, start_on: {:call, {MyApp.Api, :checkout, 2}})
      {:ok, s} = Causeway.trace(MyApp.Cart, start_on: {:call, {MyApp.Api, :checkout, 2}, args: [:_, %{vip: true}]})
      {:ok, s} = Causeway.trace(:all, start_on: {:telemetry, [:my_app, :repo, :query]})
      {:ok, s} = Causeway.trace(:all, start_on: :manual); Causeway.fire_trace(s, pid)

  ## Triggers
    * `{:call, {m, f, arity | :_}}` — the first call of that function by any
      process; with `args: [pattern, ...]` (`:_` for any argument) or
      `match_spec: [...]` (a call match spec: heads, guards) only a call that
      matches fires it. The match runs in the VM's tracing machinery, in the
      calling process, as the call starts (no code of ours runs in it).
      Meta-traced (`:erlang.trace_pattern/3` with `:meta`), so it coexists
      with other call tracing of that function.
    * `{:telemetry, event_name}` or `{:telemetry, event_name, filter: fun}` —
      the first `:telemetry` event of that name (with `filter`, one for which
      `fun.(measurements, metadata)` returns `true`; it runs in the process
      that emits the event, an exception counts as `false`). Needs the
      `:telemetry` application: Causeway does not depend on it, so when it is
      not loaded this trigger is an `ArgumentError`.
    * `:manual` — fired by `Causeway.fire_trace(session, pid)`.

  A trigger fires once: later matching calls or events are not followed.
  """

  alias Causeway.Native

  @type t ::
          {:call, mfa() | {module(), atom(), :_}}
          | {:call, mfa() | {module(), atom(), :_}, keyword()}
          | {:telemetry, [atom()]}
          | {:telemetry, [atom()], keyword()}
          | :manual

  @doc false
  # The trigger as the session uses it, or an ArgumentError naming :start_on.
  def parse!({:call, mfa}), do: parse!({:call, mfa, []})

  def parse!({:call, {m, f, a} = mfa, opts})
      when is_atom(m) and is_atom(f) and (a in 0..255 or a == :_) do
    opts = Causeway.Options.keyword!(opts, [args: nil, match_spec: nil], "start_on: {:call, ...}")

    case Code.ensure_loaded(m) do
      {:module, ^m} ->
        :ok

      {:error, reason} ->
        raise ArgumentError,
              ":start_on cannot trace #{inspect(m)}: the module is not available (#{reason})"
    end

    %{kind: :call, mfa: mfa, match_spec: match_spec!(opts)}
  end

  def parse!({:telemetry, event}), do: parse!({:telemetry, event, []})

  def parse!({:telemetry, event, opts}) do
    unless event != [] and Causeway.Options.list_of?(event, &is_atom/1),
      do:
        raise(
          ArgumentError,
          ":start_on {:telemetry, event_name} needs an event name (a list of atoms), got: #{inspect(event, limit: 5)}"
        )

    opts = Causeway.Options.keyword!(opts, [filter: nil], "start_on: {:telemetry, ...}")

    unless opts[:filter] == nil or is_function(opts[:filter], 2),
      do:
        raise(
          ArgumentError,
          ":start_on {:telemetry, _, filter: f}: f must be a function of (measurements, metadata), got: #{inspect(opts[:filter])}"
        )

    unless telemetry?(),
      do:
        raise(
          ArgumentError,
          ":start_on {:telemetry, #{inspect(event)}} needs the :telemetry application, which is not loaded (Causeway does not depend on it)"
        )

    %{kind: :telemetry, event: event, filter: opts[:filter]}
  end

  def parse!(:manual), do: %{kind: :manual}

  def parse!(other),
    do:
      raise(
        ArgumentError,
        ":start_on must be {:call, {m, f, arity | :_}}, {:call, mfa, args: [...] | match_spec: [...]}, {:telemetry, event_name}, {:telemetry, event_name, filter: fun} or :manual, got: #{inspect(other, limit: 5)}"
      )

  defp telemetry?,
    do: Code.ensure_loaded?(:telemetry) and function_exported?(:telemetry, :attach, 4)

  defp match_spec!(opts) do
    ms =
      case {opts[:args], opts[:match_spec]} do
        {nil, nil} ->
          [{:_, [], []}]

        {args, nil} when is_list(args) ->
          [{args, [], []}]

        {nil, [_ | _] = ms} ->
          unless Causeway.Options.list_of?(ms, &match_clause?/1),
            do:
              raise(
                ArgumentError,
                ":start_on match_spec: must be a list of {head, guards, body} clauses, got: #{inspect(ms, limit: 5)}"
              )

          ms

        {nil, other} ->
          raise ArgumentError,
                ":start_on match_spec: must be a list of {head, guards, body} clauses, got: #{inspect(other, limit: 5)}"

        {args, nil} ->
          raise ArgumentError,
                ":start_on args: must be a list pattern (:_ for any argument), got: #{inspect(args, limit: 5)}"

        _ ->
          raise ArgumentError, ":start_on takes args: or match_spec:, not both"
      end

    Causeway.Tracer.check_match_spec!(ms, ":start_on match")
  end

  defp match_clause?({_head, guards, body}), do: is_list(guards) and is_list(body)
  defp match_clause?(_), do: false

  # ---------------------------------------------------------------- arming

  @doc false
  # Arms the trigger: from now on the first firing gives the process `flags`
  # (which name the session's tracer) and the native session follows it.
  # `returns?`: the trigger call's return is recorded too.
  def arm(%{kind: :call, mfa: mfa, match_spec: ms}, session, flags, returns?) do
    # a tuple in a match spec body is written {tuple}
    ms_flags = Enum.map(flags, fn f -> if is_tuple(f), do: {f}, else: f end)
    fire = [{:trace, [], ms_flags}] ++ if(returns?, do: [{:exception_trace}], else: [])
    ms = Enum.map(ms, fn {head, guards, body} -> {head, guards, body ++ fire} end)

    case :erlang.trace_pattern(mfa, ms, [{:meta, Native, session}]) do
      0 ->
        {:error,
         %Causeway.Error{
           kind: :not_found,
           message: "no function matches the :start_on trigger #{inspect(mfa)}"
         }}

      _ ->
        :ok
    end
  end

  def arm(%{kind: :telemetry, event: event, filter: filter}, session, flags, _returns?) do
    config = %{session: session, flags: flags, filter: filter}

    # credo:disable-for-next-line
    case apply(:telemetry, :attach, [handler_id(), event, &__MODULE__.handle_event/4, config]) do
      :ok ->
        :ok

      {:error, reason} ->
        {:error, %Causeway.Error{kind: :trace, message: "telemetry attach: #{inspect(reason)}"}}
    end
  end

  def arm(%{kind: :manual}, _session, _flags, _returns?), do: :ok

  @doc false
  # Removes what `arm/4` set (idempotent).
  def disarm(%{kind: :call, mfa: mfa}), do: :erlang.trace_pattern(mfa, false, [:meta])

  def disarm(%{kind: :telemetry}) do
    # credo:disable-for-next-line
    if telemetry?(), do: apply(:telemetry, :detach, [handler_id()])
    :ok
  end

  def disarm(%{kind: :manual}), do: :ok

  # one telemetry handler per session process
  defp handler_id, do: {__MODULE__, self()}

  @doc false
  # The :telemetry handler: runs in the process that emitted the event. It
  # never raises (telemetry would detach it, and the emitter must not see
  # anything of ours): the filter's exceptions count as false.
  def handle_event(_event, measurements, metadata, %{session: s, flags: flags, filter: filter}) do
    if pass?(filter, measurements, metadata) and Native.tracer_session_fire(s, self()) == :ok,
      do: :erlang.trace(self(), true, flags)

    :ok
  catch
    _, _ -> :ok
  end

  defp pass?(nil, _m, _md), do: true

  defp pass?(filter, measurements, metadata) do
    filter.(measurements, metadata) == true
  catch
    _, _ -> false
  end

  @doc false
  # Fires a trigger by hand in `pid`: `:ok`, or `{:error, reason}`.
  def fire(session, pid, flags) do
    case Native.tracer_session_fire(session, pid) do
      :ok ->
        try do
          :erlang.trace(pid, true, flags)
          :ok
        rescue
          # not alive, or traced by another tracer
          ArgumentError -> {:error, :not_traceable}
        end

      other ->
        {:error, other}
    end
  end
end
