defmodule Causeway.Instance do
  @moduledoc false
  # The owner of one native pipeline (PipelineManager's Elixir side): it opens
  # it, publishes its handle for Causeway.Runtime, receives what the native
  # threads send (flush completions, backpressure levels, worker faults),
  # forwards them (and flight recorder incidents) to subscribers, and closes the pipeline (draining what is
  # buffered) when it terminates. It traps exits so that happens on shutdown.

  use GenServer
  require Logger

  alias Causeway.Native

  def start_link(opts) do
    {name, native} = Causeway.Options.start!(opts)

    # Started unlinked and linked on success: a failed start returns
    # {:error, %Causeway.Error{}} without an exit signal to the caller.
    case GenServer.start(__MODULE__, {name, native}, name: name) do
      {:ok, pid} ->
        Process.link(pid)
        {:ok, pid}

      {:error, {:already_started, pid}} ->
        what =
          case whereis(name) do
            {:ok, ^pid} ->
              "a Causeway instance named #{inspect(name)} is already running"

            _ ->
              "#{inspect(name)} is already registered to #{inspect(pid)}, not a Causeway instance"
          end

        {:error, %Causeway.Error{kind: :already_started, message: "#{what} (#{inspect(pid)})"}}

      other ->
        other
    end
  end

  @doc false
  # The handle of the running instance `name`, or a raised Causeway.Error.
  def handle!(name \\ Causeway) do
    case lookup(name) do
      {:ok, _pid, h} -> h
      {:error, e} -> raise e
    end
  end

  @doc false
  # The pid of the running instance `name` (a name registered to anything
  # else is refused, and nothing is sent to it).
  def whereis(name) do
    case lookup(name) do
      {:ok, pid, _h} -> {:ok, pid}
      {:error, _} = e -> e
    end
  end

  defp lookup(name) when is_atom(name) do
    registered = Process.whereis(name)

    case :persistent_term.get({__MODULE__, name}, nil) do
      {pid, h} when pid == registered ->
        {:ok, pid, h}

      _ when is_pid(registered) ->
        {:error,
         %Causeway.Error{
           kind: :not_running,
           message:
             "#{inspect(name)} is registered to #{inspect(registered)}, which is not a Causeway instance"
         }}

      _ ->
        {:error,
         %Causeway.Error{
           kind: :not_running,
           message:
             "no Causeway instance named #{inspect(name)} is running (start one with Causeway.start_link/1)"
         }}
    end
  end

  defp lookup(name) do
    raise ArgumentError, "a Causeway instance name must be an atom, got: #{inspect(name)}"
  end

  @impl true
  def init({name, native}) do
    Process.flag(:trap_exit, true)

    case Native.pipeline_start(native, self()) do
      {:ok, handle} ->
        :persistent_term.put({__MODULE__, name}, {self(), handle})
        # the instance named Causeway is the one Causeway.Runtime reports to
        # (and instrumented code checks the switch before it does)
        if name == Causeway do
          Causeway.Switch.sync()
          :ok = Native.rt_set_default(handle)
        end

        telemetry =
          case native.flight do
            %{telemetry: [_ | _] = events} -> Causeway.Flight.attach(name, self(), events)
            _ -> []
          end

        {:ok,
         %{
           name: name,
           dir: native.dir,
           handle: handle,
           waiters: %{},
           subscribers: %{},
           telemetry: telemetry
         }}

      {:error, reason} ->
        {:stop, Causeway.Error.from_native(reason)}
    end
  end

  @impl true
  def handle_call(:flush, from, state) do
    token = System.unique_integer([:positive])

    case Native.pipeline_flush(state.handle, token) do
      :ok -> {:noreply, put_in(state.waiters[token], from)}
      {:error, reason} -> {:reply, {:error, Causeway.Error.from_native(reason)}, state}
    end
  end

  def handle_call({:subscribe, topic, pid}, _from, state) do
    subs =
      Map.update(state.subscribers, pid, {Process.monitor(pid), MapSet.new([topic])}, fn {ref, ts} ->
        {ref, MapSet.put(ts, topic)}
      end)

    {:reply, :ok, %{state | subscribers: subs}}
  end

  def handle_call({:unsubscribe, topic, pid}, _from, state) do
    subs =
      case state.subscribers[pid] do
        nil ->
          state.subscribers

        {ref, ts} ->
          ts = MapSet.delete(ts, topic)

          if MapSet.size(ts) == 0 do
            Process.demonitor(ref, [:flush])
            Map.delete(state.subscribers, pid)
          else
            Map.put(state.subscribers, pid, {ref, ts})
          end
      end

    {:reply, :ok, %{state | subscribers: subs}}
  end

  def handle_call(:info, _from, state),
    do: {:reply, %{dir: state.dir, name: state.name, handle: state.handle}, state}

  @impl true
  def handle_info({:causeway_native, :flushed, token, result}, state) do
    {from, waiters} = Map.pop(state.waiters, token)

    if from do
      reply =
        case result do
          :ok -> :ok
          {:error, msg} -> {:error, %Causeway.Error{kind: :storage, message: msg}}
        end

      GenServer.reply(from, reply)
    end

    {:noreply, %{state | waiters: waiters}}
  end

  def handle_info({:causeway_native, :backpressure, level, info}, state) do
    publish(state, :backpressure, {:causeway, :backpressure, level, info})

    Causeway.Telemetry.execute(
      [:causeway, :backpressure],
      %{utilization: info.utilization},
      Map.put(info, :level, level)
    )

    {:noreply, state}
  end

  def handle_info({:causeway_native, :worker, what, worker, detail}, state) do
    Logger.warning("Causeway writer #{worker}: #{what}: #{detail}")
    publish(state, :health, {:causeway, :health, what, %{worker: worker, detail: detail}})

    Causeway.Telemetry.execute([:causeway, :worker, what], %{count: 1}, %{
      worker: worker,
      detail: detail
    })

    {:noreply, state}
  end

  def handle_info({:causeway_native, :incident, inc}, state) do
    publish(state, :incident, {:causeway, :incident, Causeway.Incident.from_native(inc)})
    {:noreply, state}
  end

  def handle_info({:causeway_flight_telemetry, event}, state) do
    case Native.pipeline_snapshot(state.handle, true, inspect(event)) do
      {:ok, _incident} -> :ok
      {:error, e} -> Logger.warning("Causeway flight recorder: #{inspect(event)}: #{inspect(e)}")
    end

    {:noreply, state}
  end

  def handle_info({:DOWN, _ref, :process, pid, _}, state),
    do: {:noreply, %{state | subscribers: Map.delete(state.subscribers, pid)}}

  def handle_info({:EXIT, _pid, reason}, state), do: {:stop, reason, state}
  def handle_info(_other, state), do: {:noreply, state}

  @impl true
  def terminate(_reason, state) do
    # Unpublish first so no new capture starts, then drain and close.
    if :persistent_term.get({__MODULE__, state.name}, nil) == {self(), state.handle},
      do: :persistent_term.erase({__MODULE__, state.name})

    if state.name == Causeway do
      Native.rt_set_default(nil)
      Causeway.Switch.sync()
    end

    if state.telemetry != [], do: Causeway.Flight.detach(state.telemetry)

    Native.pipeline_close(state.handle)

    for {_token, from} <- state.waiters,
        do:
          GenServer.reply(
            from,
            {:error, %Causeway.Error{kind: :closed, message: "instance stopped"}}
          )

    :ok
  end

  defp publish(state, topic, message) do
    for {pid, {_ref, topics}} <- state.subscribers,
        MapSet.member?(topics, topic),
        do: send(pid, message)
  end
end
