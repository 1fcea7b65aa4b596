defmodule Causeway.Application do
  @moduledoc false
  use Application

  @impl true
  def start(_type, _args) do
    # Instances are started by users (Causeway.start_link/1 or child_spec/1 in
    # their own tree); this supervisor hosts trace sessions and helpers.
    children = [
      {DynamicSupervisor, name: Causeway.SessionSupervisor, strategy: :one_for_one}
    ]

    Supervisor.start_link(children, strategy: :one_for_one, name: Causeway.Supervisor)
  end
end
