defmodule Causeway.Runtime do
  @moduledoc """
  Layer 1: what instrumented code calls to report events. Each function is one
  NIF call on the caller's scheduler (no message, no process hop) that writes
  to a lock-free ring; when no Causeway instance named `Causeway` is running,
  or capture is switched off, it returns at once and records nothing.

      call_id = Causeway.Runtime.function_entry(MyMod, :work, [1, 2, 3])
      result = MyMod.do_work(1, 2, 3)
      Causeway.Runtime.function_exit(call_id, result)

  The process context is kept natively: a call entered while another is open
  gets it as its parent, and `state_change/2` is caused by the message being
  handled (`message_receive/1,2`) or the open call.

  Terms (arguments, results, messages, states) are captured up to the
  instance's `:max_term_bytes` and `:max_depth` budget and with its `:redact`
  keys blanked — see `Causeway.Event` for the markers.
  """

  alias Causeway.Native

  @typedoc "The id of a captured call (the id of its entry event), or `nil` if it was not captured."
  @type call_id :: non_neg_integer() | nil

  @doc "A function was entered. Returns the call id to pass to `function_exit/2`."
  @spec function_entry(module(), atom(), list()) :: call_id()
  def function_entry(module, function, args)
      when is_atom(module) and is_atom(function) and is_list(args),
      do: Native.rt_function_entry(module, function, args)

  def function_entry(module, function, args) do
    raise ArgumentError,
          "function_entry/3 expects (module atom, function atom, args list), got: " <>
            "#{inspect(module, limit: 5)}, #{inspect(function, limit: 5)}, #{inspect(args, limit: 5)}"
  end

  @doc """
  A call returned `result` (any term), or raised: pass `{:exception, kind, reason}`.
  A `nil` call id (the entry was not captured) is ignored.
  """
  @spec function_exit(call_id(), term()) :: :ok
  def function_exit(nil, _result), do: :ok

  def function_exit(call_id, result)
      when is_integer(call_id) and call_id > 0 and call_id <= 0xFFFF_FFFF_FFFF_FFFF do
    Native.rt_function_exit(call_id, result)
  end

  def function_exit(call_id, _result),
    do:
      raise(
        ArgumentError,
        "function_exit/2 expects a call id from function_entry/3, got: #{inspect(call_id, limit: 5)}"
      )

  @doc "The calling process sends `message` to `to` (a pid)."
  @spec message_send(pid(), term()) :: :ok
  def message_send(to, message) when is_pid(to) do
    Native.rt_message_send(to, message)
  end

  def message_send(to, _message),
    do:
      raise(
        ArgumentError,
        "message_send/2 expects a pid as receiver, got: #{inspect(to, limit: 5)}"
      )

  @doc "The calling process received `message` (sender unknown)."
  @spec message_receive(term()) :: :ok
  def message_receive(message), do: message_receive(nil, message)

  @doc "The calling process received `message` from `from` (a pid, or `nil` when unknown)."
  @spec message_receive(pid() | nil, term()) :: :ok
  def message_receive(from, message) when is_pid(from) or is_nil(from) do
    Native.rt_message_receive(from, message)
  end

  def message_receive(from, _message),
    do:
      raise(
        ArgumentError,
        "message_receive/2 expects a pid or nil as sender, got: #{inspect(from, limit: 5)}"
      )

  @doc """
  The caller is done handling the message it last reported with
  `message_receive/1,2`: later state changes are no longer caused by it.
  (`use Causeway.Instrument` calls it after each `handle_*` callback.)
  """
  @spec message_handled() :: :ok
  def message_handled, do: Native.rt_message_handled()

  @doc "The calling process's state changed from `old` to `new`."
  @spec state_change(term(), term()) :: :ok
  def state_change(old, new) do
    Native.rt_state_change(old, new)
  end

  @doc "The calling process spawned `child`."
  @spec process_spawn(pid()) :: :ok
  def process_spawn(child) when is_pid(child) do
    Native.rt_process_spawn(child)
  end

  def process_spawn(child),
    do: raise(ArgumentError, "process_spawn/1 expects a pid, got: #{inspect(child, limit: 5)}")

  @doc "Process `pid` (local) exited with `reason`."
  @spec process_exit(pid(), term()) :: :ok
  def process_exit(pid, reason) when is_pid(pid) and node(pid) == node() do
    Native.rt_process_exit(pid, reason)
  end

  def process_exit(pid, _reason),
    do: raise(ArgumentError, "process_exit/2 expects a local pid, got: #{inspect(pid, limit: 5)}")

  @doc "An error was raised, thrown or exited in the calling process."
  @spec error(:error | :exit | :throw, term(), list()) :: :ok
  def error(kind, reason, stacktrace)
      when kind in [:error, :exit, :throw] and is_list(stacktrace) do
    Native.rt_error(kind, reason, stacktrace)
  end

  def error(kind, _reason, stacktrace),
    do:
      raise(
        ArgumentError,
        "error/3 expects kind :error | :exit | :throw and a stacktrace list, got: #{inspect(kind, limit: 5)}, #{inspect(stacktrace, limit: 3)}"
      )
end
