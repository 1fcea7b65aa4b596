defmodule Causeway.Tracer do
  @moduledoc """
  Zero-recompile tracing of unmodified code with an `erl_tracer` written in
  Rust: `Causeway.Native`'s `enabled/3` and `trace/5` NIFs run synchronously in
  the traced process and write to the same rings as `Causeway.Runtime` (events
  have `source: :tracer`). No tracer process, no mailbox.

      {:ok, s} = Causeway.trace(MyApp.Worker)                       # calls, returns, exceptions
      {:ok, s} = Causeway.trace({MyApp.Worker, :handle, 2}, args: [:a, :_])
      {:ok, s} = Causeway.trace(pid, what: [:send, :receive, :procs])
      {:ok, s} = Causeway.trace(:new, what: [:call, :return], functions: [MyApp.Worker])
      Causeway.stop_trace(s)

  ## Targets
  `Module`, `{M, F, arity}` (calls by any process), a pid, a list of pids,
  `:all` (every process, now and later) or `:new` (processes spawned from now on).

  ## Options
    * `:what` — any of `[:call, :return, :exception, :send, :receive, :procs]`
      (default: `[:call, :return, :exception]` for function targets,
      `[:send, :receive, :procs]` for process targets)
    * `:functions` — for process targets with `:call`: modules or `{M, F, A}`s
    * `:args` — a list pattern the call's arguments must match, `:_` for any
      (`args: [:a, :_]`); or `:match_spec` — a raw call match spec
    * safety limits, whichever trips first stops the session and says why:
      `:max_events` (10 000), `:max_rate` (events/s, 10 000), `:duration_ms`
      (60 000), `:max_msg_bytes` (2 048: the capture budget of each term)
    * `:instance` — the Causeway instance to record into (default `Causeway`)

  What the events say:
    * a send to a registered name keeps the name it was given in
      `data.to` (`name`, or `{name, node}`); across nodes it is paired with
      the named process's receive at query time (`Causeway.Cluster.Links`);
    * receives are recorded without their sender (`data.from: nil`: the
      BEAM does not say who sent a message);
    * a spawn on another node (`Node.spawn/2`, `spawn_request/4`,
      `:erpc.call/4`) gets no `spawn` trace from the BEAM: with `:procs` and
      `:receive`, it is recorded as a `process_spawn` when its parent
      receives the reply that names the child (`spawn_reply` at once;
      `:erpc.call/4`'s result when the call returns).

  A session is a supervised process: stopping it (`Causeway.stop_trace/1`), the
  process that started it dying, its instance stopping, or a limit tripping
  removes every trace flag and trace pattern it set. The starter gets
  `{:causeway_trace, session, {:stopped, reason}}` when a limit stops it.

  ## Triggered sessions (`start_on:`)
  With `start_on: trigger` (see `Causeway.Tracer.Trigger`) the session
  records nothing until its trigger fires. Then it follows the process the
  trigger fired in (hop 0) and every process a followed process at hop `h`
  sends a message to (a pid) or spawns (hop `h + 1`), and records in them
  what the target and `:what` say; the target is a module or `{m, f, arity}`
  (default `:what`: calls, returns, exceptions, sends, receives and
  spawns) or `:all` (default `[:send, :receive, :procs]`, `:functions` for
  calls). Its own options:
    * `:max_hops` (2) — how far from the triggering process (0: only it)
    * `:max_followed` (100) — at most this many processes are followed;
      those reached after that are counted as `refused` in `trace_info/1`
      (and those a hop too far as `beyond_hops`)
    * `:follow_ms` (5 000) — how long it follows after the trigger; then it
      stops with `{:stopped, :follow_ms}` (`:duration_ms` still bounds the
      whole session, armed or following, and `:max_events` etc. apply)

  The owner gets `{:causeway_trace, session, {:triggered, pid}}` when the
  trigger fires. `trace_info/1` adds `triggered`, `trigger_pid`,
  `followed: [{pid, hop}]`, `refused` and `beyond_hops`.

  How it follows, and what that means:
    * a spawned process inherits the flags as it is created (`set_on_spawn`),
      before it runs; a process a followed one sends to gets them as the
      message is sent, from a send trace pattern (`:erlang.trace_pattern(:send,
      ...)`) whose match spec sets them on the receiver, before the message
      is delivered, so what either does after that is not missed (unless
      the receiver, running on another scheduler at that very moment, has
      an event in the microseconds before the sender's own event registers
      it: then it is detached and not followed). Processes that got the
      flags but are not followed (too far, over the cap) are detached at
      their first event; sends and spawns are followed whether or not
      `:what` records them.
    * the send trace pattern is global to the VM: one triggered session
      runs on a node at a time (another gets `{:error, %Causeway.Error{kind:
      :busy}}`), and none starts while another tool has set a send pattern.
      Every send-traced process of the VM runs it while the session lives:
      processes traced by another tracer when the session starts, Causeway's
      own and the session's owner are never given the flags; a process that
      another tracer starts tracing later and that receives a message from
      a send-traced process can be taken over (avoid running other tracers
      beside a triggered session).
    * the process that started the session (its owner) is never followed.
    * a message sent to a registered name (not a pid) is not followed
      (GenServer calls and casts resolve names to pids first and are).
  """

  use GenServer, restart: :temporary

  alias Causeway.Native
  alias Causeway.Tracer.Trigger

  defstruct [:pid, :target]

  @type t :: %__MODULE__{pid: pid(), target: term()}

  @whats [:call, :return, :exception, :send, :receive, :procs]

  @doc false
  def start(target, opts), do: start(target, opts, self())

  @doc false
  # `owner`: the process whose exit ends the session (the caller; for a
  # cluster trace, the caller on the node that asked).
  def start(target, opts, owner) when is_pid(owner) do
    opts =
      Causeway.Options.keyword!(
        opts,
        [
          what: nil,
          functions: [],
          args: nil,
          match_spec: nil,
          max_events: 10_000,
          max_rate: 10_000,
          duration_ms: 60_000,
          max_msg_bytes: 2_048,
          instance: Causeway,
          start_on: nil,
          max_hops: nil,
          max_followed: nil,
          follow_ms: nil
        ],
        "Causeway.trace/2"
      )

    follow = follow!(opts)
    plan = plan!(target, opts, follow)
    handle = Causeway.Instance.handle!(opts[:instance])

    case DynamicSupervisor.start_child(
           Causeway.SessionSupervisor,
           {__MODULE__, {plan, opts, handle, owner}}
         ) do
      {:ok, pid} -> {:ok, %__MODULE__{pid: pid, target: target}}
      {:error, {%Causeway.Error{} = e, _}} -> {:error, e}
      {:error, %Causeway.Error{} = e} -> {:error, e}
      {:error, other} -> {:error, %Causeway.Error{kind: :trace, message: inspect(other)}}
    end
  end

  @doc false
  def child_spec(arg),
    do: %{id: __MODULE__, start: {GenServer, :start_link, [__MODULE__, arg]}, restart: :temporary}

  @doc false
  def stop(%__MODULE__{pid: pid}) when is_pid(pid) do
    GenServer.stop(pid, :normal, 10_000)
  catch
    :exit, _ -> :ok
  end

  def stop(other), do: bad_session!("stop_trace/1", other)

  @doc false
  def info(%__MODULE__{pid: pid}) when is_pid(pid) do
    GenServer.call(pid, :info)
  catch
    :exit, _ -> %{running: false}
  end

  def info(other), do: bad_session!("trace_info/1", other)

  @doc false
  def fire(%__MODULE__{pid: pid}, target) when is_pid(pid) and is_pid(target) do
    GenServer.call(pid, {:fire, target})
  catch
    :exit, _ -> {:error, :not_running}
  end

  def fire(%__MODULE__{}, target),
    do:
      raise(ArgumentError, "fire_trace/2 expects a local pid, got: #{inspect(target, limit: 5)}")

  def fire(other, _), do: bad_session!("fire_trace/2", other)

  defp bad_session!(fun, other),
    do:
      raise(
        ArgumentError,
        "#{fun} expects a session from Causeway.trace/2, got: #{inspect(other, limit: 5)}"
      )

  # ---------------------------------------------------------------- planning

  # The following of a triggered session (`start_on:`), or nil.
  defp follow!(opts) do
    follow_keys = [:max_hops, :max_followed, :follow_ms]

    case opts[:start_on] do
      nil ->
        case Enum.find(follow_keys, &(opts[&1] != nil)) do
          nil -> nil
          key -> raise ArgumentError, "#{inspect(key)} is an option of :start_on sessions only"
        end

      trigger ->
        %{
          source: trigger,
          trigger: Trigger.parse!(trigger),
          max_hops: Causeway.Options.int!(opts[:max_hops] || 2, :max_hops, 0..1_000),
          max_followed:
            Causeway.Options.int!(opts[:max_followed] || 100, :max_followed, 1..1_000_000),
          follow_ms: Causeway.Options.int!(opts[:follow_ms] || 5_000, :follow_ms, 1..0xFFFF_FFFF)
        }
    end
  end

  defp plan!(target, opts, follow) do
    if follow != nil and not ((is_atom(target) and target != :new) or is_tuple(target)),
      do:
        raise(
          ArgumentError,
          "with :start_on the followed processes are chosen by the trigger: the target names what is recorded in them, a module, {m, f, arity} or :all, got: #{inspect(target, limit: 5)}"
        )

    {procs, fun_targets} =
      case target do
        m when is_atom(m) and m not in [:all, :new] ->
          {:processes, [{m, :_, :_}]}

        {m, f, a} when is_atom(m) and is_atom(f) and (a in 0..255 or a == :_) ->
          {:processes, [{m, f, a}]}

        :all ->
          {:processes, []}

        :new ->
          {:new, []}

        pid when is_pid(pid) and node(pid) == node() ->
          {[pid], []}

        pids when is_list(pids) and pids != [] ->
          if Causeway.Options.list_of?(pids, &(is_pid(&1) and node(&1) == node())),
            do: {pids, []},
            else: bad_target!(target)

        _ ->
          bad_target!(target)
      end

    function_target? = fun_targets != []

    what =
      case opts[:what] do
        nil when follow != nil and function_target? ->
          [:call, :return, :exception, :send, :receive, :procs]

        nil ->
          if function_target?, do: [:call, :return, :exception], else: [:send, :receive, :procs]

        w when is_list(w) ->
          unless Causeway.Options.list_of?(w, &is_atom/1),
            do:
              raise(
                ArgumentError,
                ":what must be a list of #{inspect(@whats)}, got: #{inspect(w, limit: 5)}"
              )

          w

        other ->
          raise ArgumentError,
                ":what must be a list of #{inspect(@whats)}, got: #{inspect(other)}"
      end

    unknown = what -- @whats

    if unknown != [],
      do:
        raise(
          ArgumentError,
          "unknown :what #{inspect(unknown)}; expected any of #{inspect(@whats)}"
        )

    functions = opts[:functions]

    unless Causeway.Options.list_of?(functions, fn _ -> true end),
      do:
        raise(
          ArgumentError,
          ":functions must be a list of modules or {m, f, arity}, got: #{inspect(functions, limit: 5)}"
        )

    extra_funs =
      Enum.map(functions, fn
        m when is_atom(m) and m not in [nil, true, false] ->
          {m, :_, :_}

        {m, f, a} = mfa when is_atom(m) and is_atom(f) and (a in 0..255 or a == :_) ->
          mfa

        other ->
          raise ArgumentError,
                ":functions must hold modules or {m, f, arity}, got: #{inspect(other)}"
      end)

    patterns = fun_targets ++ extra_funs
    calls? = :call in what

    if calls? and patterns == [] do
      raise ArgumentError,
            "tracing :call needs functions: give a module or {m, f, a} target, or functions: [...]"
    end

    for {m, _, _} <- patterns do
      case Code.ensure_loaded(m) do
        {:module, ^m} ->
          :ok

        {:error, reason} ->
          raise ArgumentError,
                "cannot trace #{inspect(m)}: the module is not available (#{reason})"
      end
    end

    # checked before any trace flag or pattern is set: a timer cannot be
    # longer than 2^32 - 1 ms, and the native session holds 64-bit counters
    for {v, max} <- [
          max_events: 0x7FFF_FFFF_FFFF_FFFF,
          max_rate: 0x7FFF_FFFF_FFFF_FFFF,
          duration_ms: 0xFFFF_FFFF,
          max_msg_bytes: 64 * 1024 * 1024
        ] do
      unless is_integer(opts[v]) and opts[v] > 0 and opts[v] <= max,
        do:
          raise(
            ArgumentError,
            "#{inspect(v)} must be an integer in 1..#{max}, got: #{inspect(opts[v])}"
          )
    end

    flags =
      Enum.flat_map(what, fn
        :call -> [:call]
        :send -> [:send]
        :receive -> [:receive]
        :procs -> [:procs]
        _ -> []
      end)
      |> Enum.uniq()

    if flags == [],
      do: raise(ArgumentError, ":what must include :call, :send, :receive or :procs")

    %{
      procs: if(follow, do: :triggered, else: procs),
      what: what,
      follow: follow,
      flags: flags,
      patterns: if(calls?, do: patterns, else: []),
      match_spec: match_spec!(what, opts),
      # return_trace / exception_trace report returns (see match_spec!/2)
      returns: :return in what or :exception in what
    }
  end

  defp bad_target!(t),
    do:
      raise(
        ArgumentError,
        "trace target must be a module, {m, f, arity} (arity 0..255), a local pid, a list of local pids, :all or :new, got: #{inspect(t, limit: 5)}"
      )

  defp match_spec!(what, opts) do
    actions =
      cond do
        :exception in what -> [{:exception_trace}]
        :return in what -> [{:return_trace}]
        true -> []
      end

    ms =
      case {opts[:match_spec], opts[:args]} do
        {nil, nil} ->
          [{:_, [], actions}]

        {nil, args} when is_list(args) ->
          [{args, [], actions}]

        {nil, args} ->
          raise ArgumentError,
                ":args must be a list pattern (:_ for any argument), got: #{inspect(args, limit: 5)}"

        {ms, nil} when is_list(ms) and ms != [] ->
          unless Causeway.Options.list_of?(ms, fn _ -> true end),
            do:
              raise(
                ArgumentError,
                ":match_spec must be a list of clauses, got: #{inspect(ms, limit: 5)}"
              )

          Enum.map(ms, fn
            {head, guards, body} when is_list(guards) and is_list(body) ->
              {head, guards, Enum.uniq(body ++ actions)}

            other ->
              raise ArgumentError, "not a match spec clause: #{inspect(other, limit: 5)}"
          end)

        {ms, nil} ->
          raise ArgumentError,
                ":match_spec must be a list of clauses, got: #{inspect(ms, limit: 5)}"

        _ ->
          raise ArgumentError, "give either :args (a list pattern) or :match_spec, not both"
      end

    check_match_spec!(ms, if(opts[:match_spec], do: ":match_spec", else: ":args pattern"))
  end

  @doc false
  # `ms` if the VM compiles it as a trace match spec, else an ArgumentError
  # naming `what`.
  def check_match_spec!(ms, what) do
    result =
      try do
        :erlang.match_spec_test([], ms, :trace)
      rescue
        ArgumentError -> {:error, [:not_a_match_spec]}
      end

    case result do
      {:ok, _, _, _} ->
        ms

      {:error, errors} ->
        raise ArgumentError, "invalid #{what}: #{inspect(errors, limit: 5)}"
    end
  end

  # ---------------------------------------------------------------- session

  @impl true
  def init({plan, opts, handle, owner}) do
    Process.flag(:trap_exit, true)
    owner_ref = Process.monitor(owner)
    instance_ref = Process.monitor(Process.whereis(opts[:instance]) || self())

    modules = plan.patterns |> Enum.map(&elem(&1, 0)) |> Enum.uniq()

    session_opts = %{
      max_events: opts[:max_events],
      max_rate: opts[:max_rate],
      duration_ms: opts[:duration_ms],
      max_msg_bytes: opts[:max_msg_bytes],
      modules: modules,
      # without return events no call is ever closed: calls are then not
      # stacked as each other's parents
      returns: plan.returns,
      # spawns on other nodes are seen in the replies their parent receives
      procs: :procs in plan.what
    }

    session_opts = Map.put(session_opts, :follow, follow_opts(plan, opts[:instance], owner))

    with {:ok, session} <- Native.tracer_session_new(handle, session_opts, self()),
         :ok <- apply_patterns(plan) do
      tracer = {:tracer, Native, session}

      state = %{
        plan: plan,
        session: session,
        owner: owner,
        owner_ref: owner_ref,
        instance_ref: instance_ref,
        timer: nil,
        processes: 0,
        stopped: nil,
        # a triggered session: the flags a followed process gets, and
        # whether the send trace pattern is ours to restore
        follow_flags: [tracer | Enum.uniq(plan.flags ++ [:send, :procs, :set_on_spawn])],
        send_pattern: false
      }

      case start_tracing(plan, tracer, state, opts[:instance]) do
        {:ok, state} ->
          timer = Process.send_after(self(), :duration_elapsed, opts[:duration_ms])
          {:ok, %{state | timer: timer}}

        {:error, e, state} ->
          Native.tracer_session_stop(session, "stopped")
          cleanup(state)
          {:stop, e}
      end
    else
      {:error, %Causeway.Error{} = e} -> {:stop, e}
      {:error, e} -> {:stop, Causeway.Error.from_native(e)}
    end
  end

  defp follow_opts(%{follow: nil}, _instance, _owner), do: nil

  defp follow_opts(%{follow: f, what: what}, instance, owner) do
    %{
      max_hops: f.max_hops,
      max_followed: f.max_followed,
      follow_ms: f.follow_ms,
      trigger:
        case f.trigger do
          %{kind: :call, mfa: {m, fun, _}} -> {m, fun}
          _ -> nil
        end,
      record_sends: :send in what,
      record_receives: :receive in what,
      record_procs: :procs in what,
      exclude: ours(instance) ++ if(node(owner) == node(), do: [owner], else: [])
    }
  end

  # Causeway's own processes: never traced (their work would trace itself).
  defp ours(instance),
    do:
      Enum.filter(
        [self(), Process.whereis(instance), Process.whereis(Causeway.SessionSupervisor)],
        &is_pid/1
      )

  defp start_tracing(%{procs: :triggered} = plan, _tracer, state, instance) do
    returns? = plan.returns and :call in plan.what

    with :ok <- register_triggered(),
         {:ok, state} <- set_send_pattern(state, instance) do
      case Trigger.arm(plan.follow.trigger, state.session, state.follow_flags, returns?) do
        :ok -> {:ok, state}
        {:error, e} -> {:error, e, state}
      end
    else
      {:error, e} -> {:error, e, state}
    end
  end

  defp start_tracing(plan, tracer, state, instance) do
    matched = apply_flags(plan, tracer)
    exclude_ourselves(plan, instance)
    {:ok, %{state | processes: matched}}
  end

  # One triggered session at a time on a node: the VM's send trace pattern
  # (which follows messages) is global.
  @registered Causeway.Tracer.Triggered

  defp register_triggered do
    Process.register(self(), @registered)
    :ok
  rescue
    ArgumentError ->
      {:error,
       %Causeway.Error{
         kind: :busy,
         message: "another :start_on session is running on #{node()} (one at a time)"
       }}
  end

  # At most this many processes traced by other tracers are left out of the
  # send pattern (each is a guard of the match spec).
  @max_foreign 10_000

  # Every process with the send flag then gives the receiver of each message
  # it sends to a pid the session's tracer and a followed process's flags,
  # as the message is sent (so nothing it does after is missed); the native
  # session keeps those a followed process within max_hops sent to and
  # detaches the others. Processes traced by another tracer now, and
  # Causeway's own, are left out.
  defp set_send_pattern(state, instance) do
    foreign =
      for pid <- Process.list(),
          match?({:tracer, t} when t != [], safe_trace_info(pid, :tracer)),
          do: pid

    cond do
      :erlang.trace_info(:send, :match_spec) != {:match_spec, true} ->
        {:error,
         %Causeway.Error{
           kind: :busy,
           message: "the VM's send trace pattern is set by another tool: :start_on needs it"
         }}

      length(foreign) > @max_foreign ->
        {:error,
         %Causeway.Error{
           kind: :busy,
           message: "#{length(foreign)} processes are traced by another tracer"
         }}

      true ->
        guards =
          [{:is_pid, :"$1"}] ++
            Enum.map(ours(instance) ++ [state.owner] ++ foreign, &{:"=/=", :"$1", &1})

        ms_flags = Enum.map(state.follow_flags, fn f -> if is_tuple(f), do: {f}, else: f end)
        :erlang.trace_pattern(:send, [{[:"$1", :_], guards, [{:trace, :"$1", [], ms_flags}]}], [])
        {:ok, %{state | send_pattern: true}}
    end
  end

  defp safe_trace_info(pid, what) do
    :erlang.trace_info(pid, what)
  rescue
    ArgumentError -> :undefined
  end

  defp apply_patterns(%{patterns: patterns, match_spec: ms}) do
    Enum.reduce_while(patterns, :ok, fn mfa, :ok ->
      case :erlang.trace_pattern(mfa, ms, [:local]) do
        0 ->
          Enum.each(patterns, &:erlang.trace_pattern(&1, false, [:local]))

          {:halt,
           {:error,
            %Causeway.Error{kind: :not_found, message: "no function matches #{inspect(mfa)}"}}}

        _ ->
          {:cont, :ok}
      end
    end)
  end

  defp apply_flags(%{procs: procs, flags: flags}, tracer) when is_list(procs) do
    Enum.count(procs, fn pid ->
      try do
        :erlang.trace(pid, true, [tracer | flags]) == 1
      rescue
        ArgumentError -> false
      end
    end)
  end

  defp apply_flags(%{procs: spec, flags: flags}, tracer),
    do: :erlang.trace(spec, true, [tracer | flags])

  # Causeway's own processes are never traced (their work would trace itself).
  defp exclude_ourselves(%{procs: procs, flags: flags}, instance)
       when procs in [:processes, :new] do
    for pid <- [self(), Process.whereis(instance), Process.whereis(Causeway.SessionSupervisor)],
        is_pid(pid) do
      try do
        :erlang.trace(pid, false, flags)
      rescue
        ArgumentError -> :ok
      end
    end
  end

  defp exclude_ourselves(_, _), do: :ok

  @impl true
  def handle_call(:info, _from, state) do
    native = Native.tracer_session_info(state.session)

    info =
      Map.merge(native, %{
        running: state.stopped == nil,
        processes: state.processes,
        flags: state.plan.flags,
        patterns: state.plan.patterns
      })

    info =
      case state.plan.follow do
        nil ->
          info

        f ->
          Map.merge(info, %{
            processes: length(native.followed),
            trigger: f.source,
            max_hops: f.max_hops,
            max_followed: f.max_followed,
            follow_ms: f.follow_ms
          })
      end

    {:reply, info, state}
  end

  def handle_call({:fire, pid}, _from, %{plan: %{follow: %{}}} = state) do
    {:reply, Trigger.fire(state.session, pid, state.follow_flags), state}
  end

  def handle_call({:fire, _pid}, _from, state),
    do: {:reply, {:error, :not_triggered}, state}

  @impl true
  def handle_info({:causeway_trace, :stopped, reason}, state) do
    send(
      state.owner,
      {:causeway_trace, %__MODULE__{pid: self(), target: nil}, {:stopped, String.to_atom(reason)}}
    )

    {:stop, :normal, %{state | stopped: reason}}
  end

  def handle_info({:causeway_trace, :fired, pid}, %{plan: %{follow: f}} = state) do
    Trigger.disarm(f.trigger)
    Process.send_after(self(), :follow_elapsed, f.follow_ms)

    send(
      state.owner,
      {:causeway_trace, %__MODULE__{pid: self(), target: nil}, {:triggered, pid}}
    )

    {:noreply, state}
  end

  def handle_info(:follow_elapsed, state) do
    Native.tracer_session_stop(state.session, "follow_ms")

    send(
      state.owner,
      {:causeway_trace, %__MODULE__{pid: self(), target: nil}, {:stopped, :follow_ms}}
    )

    {:stop, :normal, %{state | stopped: "follow_ms"}}
  end

  def handle_info(:duration_elapsed, state) do
    Native.tracer_session_stop(state.session, "duration_ms")

    send(
      state.owner,
      {:causeway_trace, %__MODULE__{pid: self(), target: nil}, {:stopped, :duration_ms}}
    )

    {:stop, :normal, %{state | stopped: "duration_ms"}}
  end

  def handle_info({:DOWN, ref, :process, _, _}, %{owner_ref: ref} = state),
    do: {:stop, :normal, state}

  def handle_info({:DOWN, ref, :process, _, _}, %{instance_ref: ref} = state),
    do: {:stop, :normal, state}

  def handle_info({:EXIT, _, reason}, state), do: {:stop, reason, state}
  def handle_info(_, state), do: {:noreply, state}

  @impl true
  def terminate(_reason, state) do
    Native.tracer_session_stop(state.session, state.stopped || "stopped")
    cleanup(state)
    :ok
  end

  defp cleanup(
         %{plan: %{procs: procs, flags: flags, patterns: patterns} = plan, session: session} =
           state
       ) do
    if plan.follow, do: Trigger.disarm(plan.follow.trigger)
    if state.send_pattern, do: :erlang.trace_pattern(:send, true, [])
    for mfa <- patterns, do: :erlang.trace_pattern(mfa, false, [:local])

    case procs do
      # every flag: a followed process got more than the session's own
      :triggered ->
        for pid <- Process.list(), do: untrace(pid, [:all], session)

      list when is_list(list) ->
        for pid <- list, do: untrace(pid, flags, session)

      :processes ->
        for pid <- Process.list(), do: untrace(pid, flags, session)

      :new ->
        :erlang.trace(:new, false, flags)
        for pid <- Process.list(), do: untrace(pid, flags, session)
    end

    :ok
  end

  # Only processes whose tracer is this session: other tools' tracing stays.
  defp untrace(pid, flags, session) do
    case :erlang.trace_info(pid, :tracer) do
      {:tracer, {Native, ^session}} -> :erlang.trace(pid, false, flags)
      _ -> :ok
    end
  rescue
    ArgumentError -> :ok
  end
end
