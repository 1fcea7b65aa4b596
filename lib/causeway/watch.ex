defmodule Causeway.Watch do
  @moduledoc """
  Watching a running OTP process without recompiling it and without trace
  flags: OTP's own debug hooks (`:sys.install/3`). The hook runs inside the
  watched process, after each message it handles, and records into the same
  rings as instrumented code, with `source: :watch`:

    * each message it handles — a `message_receive`, with the caller as
      sender for a call (`GenServer.call/2`'s request, a cast's message, an
      info message as it arrived; for a `gen_statem`, `{type, content}`:
      `{:call, request}`, `{:cast, msg}`, `{:info, msg}`, ...);
    * each reply it sends — a `message_send` to the caller, caused by the
      message;
    * its state after each message, when it changed — a `state_change`
      caused by the message, so `state_history/1`, `state_at/2`,
      `causal_chain/1` and `changes/3` work as for instrumented code. When
      the watch starts, the current state is recorded as a `state_change`
      from `nil`.

  For a `gen_statem` the hooks carry the state *name* only
  (`{:consume, event, state, next_state}`), not its data: the recorded
  "state" of a watched `gen_statem` is its state name. To see its data,
  trace the callback module (`Causeway.trace(MyStatem)` records its
  callbacks' return values) or instrument it.

  For a `gen_event` manager the hook carries each message as it arrived
  (`{:notify, event}`, a `sync_notify` or handler call with its caller) and
  no state at all: the handlers' states are recorded once, when the watch
  starts (`{handler, id, state}` for each), and not after each event, and
  replies are not recorded. Trace or instrument the handler module to see
  its state change.

      {:ok, w} = Causeway.watch(MyApp.Cart)            # a pid, a name, {name, node}, {:via, ...}
      GenServer.call(MyApp.Cart, {:add, :apple})
      Causeway.flush()
      Causeway.state_history(w.pid)
      Causeway.unwatch(w)

  ## Options

    * `:max_events` (10 000), `:max_rate` (events per second, 10 000),
      `:duration_ms` (60 000) — whichever trips first removes the hook;
    * `:max_state_bytes` (65 536, in 64..64 MiB) — the byte budget of a
      captured state, message or reply (larger than the instance's
      `:max_term_bytes` default: states are what a watch is for);
    * `:timeout` (5 000 ms) — how long to wait for the process to answer
      the system messages that install the hook: a process that does not
      handle system messages (not an OTP process) or is blocked gives
      `{:error, %Causeway.Error{kind: :timeout}}` in that time;
    * `:instance` (`Causeway`) — the instance to record into.

  The hook is removed by `Causeway.unwatch/1`, when the process that called
  `watch/2` exits, when the watched process exits, when a limit trips and
  when the instance stops: `:sys.get_status/1` then shows no Causeway hook.
  The caller gets `{:causeway_watch, watch, {:stopped, reason}}` when a
  limit removes it.
  """

  use GenServer, restart: :temporary

  defstruct [:pid, :session, :target]

  @type t :: %__MODULE__{pid: pid(), session: pid(), target: term()}

  @defaults [
    max_events: 10_000,
    max_rate: 10_000,
    duration_ms: 60_000,
    max_state_bytes: 65_536,
    timeout: 5_000,
    instance: Causeway
  ]

  @doc false
  def start(target, opts) do
    opts = Causeway.Options.keyword!(opts, @defaults, "Causeway.watch/2")

    for {key, range} <- [
          max_events: 1..0x7FFF_FFFF_FFFF_FFFF,
          max_rate: 1..0x7FFF_FFFF_FFFF_FFFF,
          duration_ms: 1..0xFFFF_FFFF,
          max_state_bytes: 64..(64 * 1024 * 1024),
          timeout: 1..0xFFFF_FFFF
        ],
        do: Causeway.Options.int!(opts[key], key, range)

    unless is_atom(opts[:instance]),
      do: raise(ArgumentError, ":instance must be an atom, got: #{inspect(opts[:instance])}")

    case resolve(target) do
      {:remote, node, name} ->
        remote(node, name, opts, target)

      {:ok, pid} ->
        with {:ok, _h} <- instance(opts[:instance]) do
          spec = {__MODULE__, {pid, target, opts, self()}}

          case DynamicSupervisor.start_child(Causeway.SessionSupervisor, spec) do
            {:ok, session} -> {:ok, %__MODULE__{pid: pid, session: session, target: target}}
            {:error, %Causeway.Error{} = e} -> {:error, e}
            {:error, {%Causeway.Error{} = e, _}} -> {:error, e}
            {:error, other} -> {:error, error(:watch, inspect(other, limit: 10))}
          end
        end

      {:error, _} = e ->
        e
    end
  end

  @doc false
  def stop(%__MODULE__{session: session}) when is_pid(session) do
    GenServer.stop(session, :normal, 10_000)
  catch
    :exit, _ -> :ok
  end

  def stop(other),
    do:
      raise(
        ArgumentError,
        "unwatch/1 expects a watch from Causeway.watch/2, got: #{inspect(other, limit: 5)}"
      )

  @doc false
  def child_spec(arg),
    do: %{id: __MODULE__, start: {GenServer, :start_link, [__MODULE__, arg]}, restart: :temporary}

  defp instance(name) do
    {:ok, Causeway.Instance.handle!(name)}
  rescue
    e in Causeway.Error -> {:error, e}
  end

  defp resolve(pid) when is_pid(pid) and node(pid) == node() do
    if Process.alive?(pid),
      do: {:ok, pid},
      else: {:error, error(:not_found, "#{inspect(pid)} is not alive")}
  end

  defp resolve(pid) when is_pid(pid), do: {:remote, node(pid), pid}

  defp resolve({name, node}) when is_atom(name) and is_atom(node) and node == node(),
    do: resolve(name)

  defp resolve({name, node}) when is_atom(name) and is_atom(node), do: {:remote, node, name}

  defp resolve({:via, mod, _} = via) when is_atom(mod) do
    case GenServer.whereis(via) do
      pid when is_pid(pid) -> resolve(pid)
      _ -> {:error, error(:not_found, "nothing is registered as #{inspect(via, limit: 5)}")}
    end
  rescue
    _ -> {:error, error(:not_found, "#{inspect(via, limit: 5)} could not be looked up")}
  end

  defp resolve({:global, _} = g) do
    case GenServer.whereis(g) do
      pid when is_pid(pid) -> resolve(pid)
      _ -> {:error, error(:not_found, "nothing is registered as #{inspect(g, limit: 5)}")}
    end
  end

  defp resolve(name) when is_atom(name) and name not in [nil, true, false] do
    case Process.whereis(name) do
      pid when is_pid(pid) -> {:ok, pid}
      nil -> {:error, error(:not_found, "no process is registered as #{inspect(name)}")}
    end
  end

  defp resolve(other),
    do:
      raise(
        ArgumentError,
        "watch/2 expects a pid, a registered name, {name, node}, {:global, name} or {:via, module, name}, got: #{inspect(other, limit: 5)}"
      )

  # {name, node} on another connected node: the watch runs there, in that
  # node's instance (each node records locally).
  defp remote(node, name, opts, target) do
    if node in Node.list() do
      case :erpc.call(node, Causeway, :watch, [name, opts], opts[:timeout] + 1_000) do
        {:ok, %__MODULE__{} = w} -> {:ok, %{w | target: target}}
        {:error, _} = e -> e
      end
    else
      {:error, error(:not_connected, "node #{inspect(node)} is not connected")}
    end
  catch
    kind, reason ->
      {:error, error(:remote, "#{inspect(node)}: #{inspect({kind, reason}, limit: 10)}")}
  end

  defp error(kind, msg), do: %Causeway.Error{kind: kind, message: msg}

  # ------------------------------------------------------------ session

  @impl true
  def init({pid, target, opts, owner}) do
    Process.flag(:trap_exit, true)
    timeout = opts[:timeout]
    id = {__MODULE__, make_ref()}
    budget = opts[:max_state_bytes]

    with {:ok, {:status, _, {:module, behaviour}, _}} <-
           sys(fn -> :sys.get_status(pid, timeout) end, pid),
         # the state now, recorded inside the process (the first point of
         # its state history), then the hook
         record_initial = fn s ->
           Causeway.Watch.__record__(:state, nil, state_of(behaviour, s), budget)
           s
         end,
         {:ok, current} <- sys(fn -> :sys.replace_state(pid, record_initial, timeout) end, pid),
         hook = hook_state(self(), state_of(behaviour, current), opts),
         :ok <-
           sys(fn -> :sys.install(pid, {id, &Causeway.Watch.__debug__/3, hook}, timeout) end, pid) do
      refs = %{
        owner: Process.monitor(owner),
        watched: Process.monitor(pid),
        instance: Process.monitor(Process.whereis(opts[:instance]) || self())
      }

      timer = Process.send_after(self(), :duration_elapsed, opts[:duration_ms])

      {:ok,
       %{
         pid: pid,
         id: id,
         owner: owner,
         target: target,
         refs: refs,
         timer: timer,
         timeout: timeout,
         installed: true
       }}
    else
      {:error, e} -> {:stop, e}
      {:ok, other} -> {:stop, error(:watch, "unexpected status: #{inspect(other, limit: 5)}")}
    end
  end

  # a :sys call that cannot hang the caller: a process that does not
  # answer system messages in time, or is gone, is an error
  defp sys(fun, pid) do
    case fun.() do
      :ok -> :ok
      other -> {:ok, other}
    end
  catch
    :exit, {:timeout, _} ->
      {:error,
       error(
         :timeout,
         "#{inspect(pid)} did not answer a system message in time: it is blocked, or not an OTP process (gen_server, gen_statem, gen_event, :proc_lib with system messages)"
       )}

    :exit, {:noproc, _} ->
      {:error, error(:not_found, "#{inspect(pid)} is not alive")}

    :exit, {reason, {:sys, _, _}} when reason in [:noproc, :normal, :shutdown] ->
      {:error, error(:not_found, "#{inspect(pid)} is not alive")}

    :exit, reason ->
      {:error, error(:watch, "#{inspect(pid)}: #{inspect(reason, limit: 10)}")}
  end

  # a gen_statem's state is {state_name, data}: only names reach the hooks,
  # so its name is what is recorded
  defp state_of(:gen_statem, {name, _data}), do: name
  defp state_of(_, s), do: s

  defp hook_state(session, current, opts) do
    %{
      session: session,
      last: current,
      events: 0,
      max_events: opts[:max_events],
      max_rate: opts[:max_rate],
      window: System.monotonic_time(:millisecond),
      in_window: 0,
      until: System.monotonic_time(:millisecond) + opts[:duration_ms],
      budget: opts[:max_state_bytes]
    }
  end

  @impl true
  def handle_info(:duration_elapsed, state), do: {:stop, :normal, finish(state, :duration_ms)}

  def handle_info({:causeway_watch_limit, reason}, state),
    do: {:stop, :normal, notify(%{state | installed: false}, reason)}

  def handle_info({:DOWN, ref, :process, _, _}, %{refs: %{watched: ref}} = state),
    do: {:stop, :normal, %{state | installed: false}}

  def handle_info({:DOWN, ref, :process, _, _}, %{refs: %{owner: ref}} = state),
    do: {:stop, :normal, state}

  def handle_info({:DOWN, ref, :process, _, _}, %{refs: %{instance: ref}} = state),
    do: {:stop, :normal, state}

  def handle_info({:EXIT, _, reason}, state), do: {:stop, reason, state}
  def handle_info(_, state), do: {:noreply, state}

  @impl true
  def terminate(_reason, state) do
    if state.installed, do: remove(state)
    :ok
  end

  defp finish(state, reason), do: notify(state, reason)

  defp notify(state, reason) do
    send(
      state.owner,
      {:causeway_watch, %__MODULE__{pid: state.pid, session: self(), target: state.target},
       {:stopped, reason}}
    )

    state
  end

  defp remove(state) do
    :sys.remove(state.pid, state.id, state.timeout)
  catch
    _, _ -> :ok
  end

  # ------------------------------------------------------------ the hook

  @doc false
  # The debug function OTP calls inside the watched process. It must never
  # raise (that would crash the process it watches): anything unexpected
  # removes the hook instead.
  def __debug__(hook, event, _name) do
    case record(event, hook) do
      {n, last} -> count(%{hook | last: last}, n)
    end
  catch
    _, _ ->
      send(hook.session, {:causeway_watch_limit, :hook_error})
      :done
  end

  @doc false
  def __record__(kind, a, b, budget), do: Causeway.Native.rt_watch(kind, a, b, budget)

  # gen_server
  defp record({:in, {:"$gen_call", from, request}}, h), do: received(caller(from), request, h)
  defp record({:in, {:"$gen_cast", msg}}, h), do: received(nil, msg, h)

  # gen_statem: {in, Event, State}, then {consume, Event, State, NextState}
  defp record({:in, {{:call, from}, content}, _state}, h),
    do: received(caller(from), {:call, content}, h)

  defp record({:in, {type, content}, _state}, h), do: received(nil, {type, content}, h)

  defp record({:consume, _event, state, next}, h) do
    if next != state, do: __record__(:state, state, next, h.budget)
    __record__(:handled, nil, nil, h.budget)
    {if(next != state, do: 1, else: 0), next}
  end

  defp record({:in, msg}, h), do: received(nil, msg, h)

  # a reply, then the state after the message (gen_server)
  defp record({:out, reply, to, new}, h) do
    case caller(to) do
      pid when is_pid(pid) -> __record__(:send, pid, reply, h.budget)
      _ -> :ok
    end

    {1 + changed(new, h), new}
  end

  # gen_statem replies: {out, Reply, To}
  defp record({:out, reply, to}, h) do
    case caller(to) do
      pid when is_pid(pid) -> __record__(:send, pid, reply, h.budget)
      _ -> :ok
    end

    {1, h.last}
  end

  defp record({:noreply, new}, h), do: {changed(new, h), new}
  defp record(_other, h), do: {0, h.last}

  defp received(from, msg, h) do
    __record__(:receive, from, msg, h.budget)
    {1, h.last}
  end

  defp changed(new, h) do
    n =
      if new !== h.last do
        __record__(:state, h.last, new, h.budget)
        1
      else
        0
      end

    __record__(:handled, nil, nil, h.budget)
    n
  end

  defp caller({pid, _tag}) when is_pid(pid), do: pid
  defp caller(pid) when is_pid(pid), do: pid
  defp caller(_), do: nil

  defp count(h, 0), do: h

  defp count(h, n) do
    now = System.monotonic_time(:millisecond)

    {window, in_window} =
      if now - h.window >= 1_000, do: {now, n}, else: {h.window, h.in_window + n}

    h = %{h | events: h.events + n, window: window, in_window: in_window}

    cond do
      h.events >= h.max_events -> stop_hook(h, :max_events)
      in_window > h.max_rate -> stop_hook(h, :max_rate)
      now >= h.until -> stop_hook(h, :duration_ms)
      true -> h
    end
  end

  defp stop_hook(h, reason) do
    send(h.session, {:causeway_watch_limit, reason})
    :done
  end
end
