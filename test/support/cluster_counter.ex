defmodule Causeway.ClusterHelper.Counter do
  @moduledoc false
  # An instrumented GenServer for cluster tests (compiled into test/support,
  # so every peer node has it): handle_call records the request's receive
  # (with the caller) and the state change it makes.
  use GenServer
  use Causeway.Instrument

  def start(n), do: GenServer.start(__MODULE__, n)

  @impl true
  def init(n), do: {:ok, n}

  @impl true
  def handle_call({:add, k}, _from, n), do: {:reply, n + k, n + k}
end
