defmodule Causeway.ChildVM do
  @moduledoc false
  # A child BEAM for tests whose subject may crash or hang the VM: an OTP
  # `:peer` connected over its standard I/O (no distribution, no epmd), with
  # this VM's code path and the :causeway application started. If the child
  # dies (a native abort, a halt), calls into it fail with its exit reason
  # instead of taking the test VM down.

  @doc "Starts a child VM; returns its `:peer` pid."
  def start! do
    args = Enum.flat_map(:code.get_path(), fn p -> [~c"-pa", p] end)

    peer =
      case :peer.start(%{connection: :standard_io, args: args, wait_boot: 60_000}) do
        {:ok, peer, _node} -> peer
        {:ok, peer} -> peer
      end

    {:ok, _} = :peer.call(peer, Application, :ensure_all_started, [:causeway], 60_000)
    peer
  end

  @doc "Calls `m.f(args)` in the child; `{:ok, result}` or `{:crashed, reason}`."
  def call(peer, m, f, args, timeout \\ 120_000) do
    {:ok, :peer.call(peer, m, f, args, timeout)}
  catch
    kind, reason -> {:crashed, {kind, reason}}
  end

  @doc """
  Stops the child VM normally (init:stop, as at the end of a script) and
  waits until its OS process is gone (so its files and locks are released).
  """
  def stop(peer) do
    os_pid =
      case call(peer, :os, :getpid, [], 10_000) do
        {:ok, p} -> p
        _ -> nil
      end

    try do
      case call(peer, :init, :stop, [], 10_000) do
        _ -> :ok
      end

      :peer.stop(peer)
    catch
      _, _ -> :ok
    end

    if os_pid, do: wait_gone(os_pid, 600)
    :ok
  end

  defp wait_gone(_os_pid, 0), do: raise("the child VM did not exit in 60 s")

  defp wait_gone(os_pid, n) do
    if File.exists?("/proc/#{os_pid}") do
      Process.sleep(100)
      wait_gone(os_pid, n - 1)
    else
      :ok
    end
  end
end
