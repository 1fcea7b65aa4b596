defmodule Causeway.ClusterCase do
  @moduledoc false
  # Cluster tests with real nodes: Causeway.Case's helpers, this VM made a
  # distributed node once per module, a long timeout, and `peers!/1` to
  # start peers with their own instances for one test (stopped after it).
  use ExUnit.CaseTemplate

  alias Causeway.ClusterHelper

  using do
    quote do
      import Causeway.Case
      import Causeway.ClusterCase
      alias Causeway.ClusterHelper
      @moduletag timeout: 300_000
    end
  end

  setup_all do
    ClusterHelper.distribute!()
    :ok
  end

  @doc """
  Starts a peer per name, each with an instance on a fresh directory;
  `%{name => node, :peers => %{name => peer}, :dirs => %{name => dir}}`.
  """
  def peers!(names) do
    started =
      for n <- names do
        dir = Causeway.Case.tmp_dir!(to_string(n))
        {peer, node} = ClusterHelper.peer!(n, dir)
        {n, peer, node, dir}
      end

    ExUnit.Callbacks.on_exit(fn -> for {_, p, _, _} <- started, do: ClusterHelper.stop(p) end)

    Map.merge(Map.new(started, fn {n, _, node, _} -> {n, node} end), %{
      peers: Map.new(started, fn {n, p, _, _} -> {n, p} end),
      dirs: Map.new(started, fn {n, _, _, d} -> {n, d} end)
    })
  end
end
