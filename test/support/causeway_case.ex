defmodule Causeway.Case do
  @moduledoc false
  # Shared helpers: a fresh store directory per test and an instance started
  # under the test supervisor (stopped, drained and closed after the test).
  use ExUnit.CaseTemplate

  using do
    quote do
      import Causeway.Case
    end
  end

  def tmp_dir!(tag \\ "t") do
    dir =
      Path.join(
        System.tmp_dir!(),
        "causeway-test-#{tag}-#{System.unique_integer([:positive])}-#{:os.getpid()}"
      )

    File.rm_rf!(dir)
    ExUnit.Callbacks.on_exit(fn -> File.rm_rf!(dir) end)
    dir
  end

  def start_causeway!(opts \\ []) do
    opts = Keyword.put_new_lazy(opts, :dir, fn -> tmp_dir!() end)
    pid = ExUnit.Callbacks.start_supervised!({Causeway, opts})
    {pid, opts[:dir]}
  end

  @doc "Stops the supervised instance (drains and closes it)."
  def stop_causeway!(name \\ Causeway) do
    :ok = ExUnit.Callbacks.stop_supervised(name)
  end

  def flush!(name \\ Causeway), do: :ok = Causeway.flush(name)

  @doc """
  The VM's own UTC time, the clock events are stamped with (Erlang system
  time). `DateTime.utc_now/0` reads the OS clock: after the OS clock is
  stepped the two differ for a while (the VM slews towards it by 1 %), so
  "recorded between these two instants" compares with this one.
  """
  def vm_now, do: DateTime.from_unix!(System.system_time(:microsecond), :microsecond)

  @doc "Runs `fun` in a new process and waits for its result."
  def in_process(fun) do
    task = Task.async(fun)
    Task.await(task, 30_000)
  end
end
