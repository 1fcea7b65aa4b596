defmodule Causeway.Application do
  @moduledoc false
  use Application

  @impl true
  def start(_type, _args) do
    # the clock offsets Causeway.Cluster measured, by node (this process
    # lives as long as the application)
    :ets.new(Causeway.Cluster.Offsets, [:named_table, :public, read_concurrency: true])

    # Instances are started by users (Causeway.start_link/1 or child_spec/1 in
    # their own tree); this supervisor hosts trace sessions and helpers.
    children = [
      {DynamicSupervisor, name: Causeway.SessionSupervisor, strategy: :one_for_one}
    ]

    Supervisor.start_link(children, strategy: :one_for_one, name: Causeway.Supervisor)
  end
end
